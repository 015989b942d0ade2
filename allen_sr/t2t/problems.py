"""tensor2tensor Problem base classes for tile super-resolution (registered in problems/).

Records hold lossless raw 64x64 RGB tiles (allen_sr.data.tfrecord). Each problem crops its target from a
tile (random crop plus flips/90-degree rotations when training, the centre crop otherwise, so eval
and decode see fixed examples) and derives its input by area downsampling, rounded to uint8; in
training the model's `degradation` hparam makes that input realistic (allen_sr.t2t.degradation).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import sys
from collections import Counter

import tensorflow.compat.v1 as tf
from tensor2tensor.data_generators import problem, text_encoder
from tensor2tensor.layers import modalities
from tensor2tensor.utils import contrib
from tensor2tensor.utils import metrics as t2t_metrics

from allen_sr.data import datagen, download
from allen_sr.data.allen_urls import DEFAULT_API_BASE, Region
from allen_sr.data.manifest import image_path, read_manifest
from allen_sr.data.retry import DEFAULT_RATE
from allen_sr.data.images import list_images
from allen_sr.data import tiles as tiling
from allen_sr.t2t import degradation
from allen_sr.errors import InvalidInputError, MissingInputError, count

log = logging.getLogger(__name__)

# In an Allen --tmp_dir: datagen downloads into it, so a rerun goes on with that download (else: tiled as it is).
DATAGEN_DOWNLOAD_MARK = ".allen-sr-datagen-download"


class TileSuperResolution(problem.Problem):
    """Base: input_dim x input_dim -> output_dim x output_dim from 64 px tissue tiles."""

    input_dim = 8
    output_dim = 32
    num_channels = 3
    inpaint_fraction = 0.0
    dev_fraction = 0.1
    tile_size = tiling.TILE_SIZE

    # --- data generation ------------------------------------------------------------------
    def dataset_filename(self) -> str:
        return self.name

    def source_images(self, tmp_dir: str) -> list[str]:
        """The image files to tile; subclasses decide where they come from."""
        raise NotImplementedError

    def check_tmp_dir(self, tmp_dir: str) -> None:
        """Refuse a --tmp_dir this problem cannot tile, before datagen creates --data_dir; here
        nothing to check (a download goes into it)."""

    def generate_data(self, data_dir, tmp_dir, task_id=-1):
        del task_id
        paths = self.source_images(tmp_dir)
        summary = datagen.build_tile_dataset(
            paths, data_dir, self.dataset_filename(), dev_fraction=self.dev_fraction,
            size=self.tile_size)
        if summary is None:
            print(f"{self.dataset_filename()}: dataset in {data_dir} is complete and up to date")
            summary = datagen.stored_summary(data_dir, self.dataset_filename())
            if summary.skipped:
                print(summary.skipped_report())
        else:
            print(summary.report())
        for split in ("train", "dev"):  # an earlier build of these images had none: say so again
            if summary.tiles_kept[split] == 0:
                raise InvalidInputError(
                    f"no {split} tiles from the {count(len(paths), 'image')} in {tmp_dir}: each file goes "
                    f"wholly to train or dev, chosen by a hash of its name ({self.dev_fraction:.0%} go to dev); "
                    "give several files with tissue (or cut one large slide into pieces)")

    # --- reading --------------------------------------------------------------------------
    def example_reading_spec(self):
        data_fields = {
            "image/encoded": tf.FixedLenFeature((), tf.string),
            "image/format": tf.FixedLenFeature((), tf.string),
        }
        # Tiles are raw uint8 bytes (allen_sr.data.tfrecord); the decoder also reads PNG/JPEG records.
        decoders = {
            "targets": contrib.slim().tfexample_decoder.Image(
                image_key="image/encoded", format_key="image/format",
                shape=[self.tile_size, self.tile_size, 3], channels=3),
        }
        return data_fields, decoders

    def preprocess(self, dataset, mode, hparams, interleave=True):
        """preprocess_example over the dataset by a parallel map, in order.

        t2t's default wraps every example in its own one-element Dataset and interleaves them
        (parallel_interleave, or flat_map) so that preprocess_example may return several
        examples; ours returns exactly one, and a plain map skips building a dataset per example
        (measured: ~10% less input-pipeline CPU, a few tenths of a percent of a training step).
        """
        del interleave  # a map keeps the order; the training examples are shuffled later anyway
        return dataset.map(lambda example: self.preprocess_example(example, mode, hparams),
                           num_parallel_calls=tf.data.experimental.AUTOTUNE)

    def preprocess_example(self, example, mode, hparams):
        tile = tf.reshape(example["targets"], [self.tile_size, self.tile_size, 3])
        size = self.output_dim
        spec = None
        if mode == tf.estimator.ModeKeys.TRAIN:
            augment = str(getattr(hparams, "color_augment", "") or "")
            if augment:
                tile = color_augment(tile, augment)
            # A stock set has no `degradation`: clean inputs, as the problem defines them.
            spec = degradation.training_degradation(hparams)
            target = tf.image.random_crop(tile, [size, size, 3])
            target = tf.image.random_flip_left_right(target)
            target = tf.image.rot90(target, tf.random.uniform([], 0, 4, dtype=tf.int32))
        else:
            offset = (self.tile_size - size) // 2
            target = tile[offset:offset + size, offset:offset + size, :]
        if self.num_channels == 1:
            target = tf.cast(tf.round(tf.image.rgb_to_grayscale(tf.cast(target, tf.float32))), tf.uint8)
        target = tf.reshape(target, [size, size, self.num_channels])
        # Training only: a realistic (blurred, noisy, JPEG) input per example; otherwise the exact
        # rounded area average, which is what the problem and its dev metrics are defined on.
        target, inputs = degradation.degrade_pair(target, spec, self.input_dim)
        if self.inpaint_fraction:
            inputs = inputs * random_square_mask(self.input_dim, self.num_channels, self.inpaint_fraction)
        example["inputs"] = tf.cast(inputs, tf.int64)
        example["targets"] = tf.cast(target, tf.int64)
        return example

    def feature_encoders(self, data_dir):
        del data_dir
        return {"inputs": text_encoder.ImageEncoder(channels=self.num_channels),
                "targets": text_encoder.ImageEncoder(channels=self.num_channels)}

    def hparams(self, defaults, model_hparams):
        p = defaults
        p.modality = {"inputs": modalities.ModalityType.IDENTITY,
                      "targets": modalities.ModalityType.IDENTITY}
        p.vocab_size = {"inputs": 256, "targets": 256}
        p.batch_size_multiplier = 256
        p.input_space_id = problem.SpaceID.IMAGE
        p.target_space_id = problem.SpaceID.IMAGE
        if hasattr(model_hparams, "num_channels"):
            model_hparams.num_channels = self.num_channels
        if hasattr(model_hparams, "img_len"):
            model_hparams.img_len = self.output_dim
        if hasattr(model_hparams, "upscale_factor"):  # static weight shapes (input_patch)
            model_hparams.upscale_factor = self.output_dim // self.input_dim

    def eval_metrics(self):
        return [t2t_metrics.Metrics.ACC, t2t_metrics.Metrics.ACC_PER_SEQ,
                t2t_metrics.Metrics.NEG_LOG_PERPLEXITY]

    def eval_metric_fns(self, model_hparams):
        """t2t's metrics above plus PSNR and SSIM (metrics-<problem>/targets/psnr, .../ssim).

        They are not in eval_metrics() because t2t only accepts names from its own METRICS_FNS
        table there.
        """
        from allen_sr.t2t import metrics as sr_metrics  # our t2t_metrics, not tensor2tensor's

        fns = super().eval_metric_fns(model_hparams)
        fns.update(sr_metrics.EVAL_METRIC_FNS)
        return fns


COLOR_AUGMENTS = ("permute", "od", "brightness")


def color_augment(tile, spec):
    """Random colour/stain change of a uint8 RGB tile [H, W, 3] (training only), uint8 again.

    ``spec`` joins any of these with "+" (applied in this order):

    * ``od``: stain strength/hue: each channel's optical density -log((v + 1) / 256) is scaled by
      its own factor exp(U(-0.5, 0.5)) (Beer-Lambert: white stays white, stain gets
      lighter/darker and changes hue);
    * ``brightness``: all channels times exp(U(-0.15, 0.15)) (illumination);
    * ``permute``: a random permutation of the channels (every stain colour in every channel).

    The input is derived from the augmented target afterwards, so pairs stay consistent.
    """
    parts = [p for p in spec.split("+") if p]
    unknown = [p for p in parts if p not in COLOR_AUGMENTS]
    if unknown:
        raise InvalidInputError(f"color_augment={spec!r}: unknown part(s) {unknown} (known: "
                                f"{', '.join(COLOR_AUGMENTS)}, joined by '+')")
    x = tf.cast(tile, tf.float32)
    if "od" in parts:
        density = -tf.math.log((x + 1.0) / 256.0)
        density *= tf.exp(tf.random.uniform([1, 1, 3], -0.5, 0.5))
        x = 256.0 * tf.exp(-density) - 1.0
    if "brightness" in parts:
        x *= tf.exp(tf.random.uniform([], -0.15, 0.15))
    if "permute" in parts:
        x = tf.gather(x, tf.random.shuffle(tf.range(3)), axis=2)
    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tile.dtype)


def random_square_mask(size, channels, fraction):
    """A per-example random square of zeros covering `fraction` of a size x size image.

    Drawn with TF ops at run time, so each example gets its own position (the stock problem drew
    one numpy mask at graph-build time, shared by every example).
    """
    side = int((size * size * fraction) ** 0.5)
    if side == 0:
        return tf.ones([size, size, channels], tf.uint8)
    top = tf.random.uniform([], 0, size - side + 1, dtype=tf.int32)
    left = tf.random.uniform([], 0, size - side + 1, dtype=tf.int32)
    rows = tf.range(size)[:, None]
    cols = tf.range(size)[None, :]
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    return tf.tile(tf.cast(~inside, tf.uint8)[:, :, None], [1, 1, channels])


class LocalImages(TileSuperResolution):
    """Tiles whatever images the user put directly in --tmp_dir; nothing is downloaded."""

    dev_fraction = 0.2

    def source_images(self, tmp_dir):
        paths = list_images(tmp_dir)
        if not paths:
            raise InvalidInputError(
                f"no images in --tmp_dir={tmp_dir}: put your .png/.jpg/.tif files directly in it")
        return paths

    def check_tmp_dir(self, tmp_dir):
        """A missing --tmp_dir, or one without images, is refused as source_images refuses it."""
        self.source_images(tmp_dir)


class AllenBrain(TileSuperResolution):
    """Allen Brain Atlas section images: downloaded into --tmp_dir (resumable), then tiled."""

    dev_fraction = 0.1

    def dataset_filename(self):
        # Every Allen variant reads the same 64 px RGB tiles.
        return "img2img_allen_brain"

    # Where the built-in download fetches from, how fast, and what: the settings README step 1 gives
    # `allen-sr download` (downsample 1 halves each side), so either way the folder holds the same images.
    api_base = DEFAULT_API_BASE
    download_rate: float | None = DEFAULT_RATE
    download_params = {"downsample": 1, "quality": None, "region": None}

    def source_images(self, tmp_dir):
        os.makedirs(tmp_dir, exist_ok=True)
        mark = os.path.join(tmp_dir, DATAGEN_DOWNLOAD_MARK)
        # The stock images into an empty folder, or the rest of datagen's own (interrupted) download there; the
        # user's own images, or their own `allen-sr download` selection (--max_images, --image_ids), are tiled as
        # they are.
        if not list_images(tmp_dir) or os.path.exists(mark):
            with open(mark, "w") as out:
                out.write("allen-sr datagen downloads the stock Allen images into this folder and completes them\n")
            self._download_stock_images(tmp_dir, read_manifest(tmp_dir))
        else:
            print(f"datagen: tiling the {count(len(list_images(tmp_dir)), 'image')} in --tmp_dir={tmp_dir}; nothing "
                  "is downloaded (an empty --tmp_dir gets the 100 stock Allen images)")
        paths = list_images(tmp_dir)
        warn_mixed_settings(tmp_dir, read_manifest(tmp_dir), paths)
        return paths

    def _download_stock_images(self, tmp_dir: str, entries: dict) -> None:
        """Fetch the stock images not finished yet (a Ctrl-C'd run goes on where it stopped) with the settings of
        those already there; say how many failed, and stop on a full disk or if none of them is there."""
        settings = Counter(json.dumps(entry.get("params"), sort_keys=True) for entry in entries.values())
        params = json.loads(settings.most_common(1)[0][0]) if settings else dict(self.download_params)
        # Ids finished under other settings are left alone (warn_mixed_settings names them), not fetched again.
        ids = [i for i in download.default_image_ids() if entries.get(i, {}).get("params", params) == params]
        todo = [i for i in ids if i not in entries or not image_path(tmp_dir, i).exists()]
        print(f"datagen: fetching {count(len(todo), 'stock Allen image')} into --tmp_dir={tmp_dir} "
              f"({len(ids) - len(todo)} of the {len(ids)} there already)", flush=True)
        region = params.get("region")
        progress = sys.stderr.isatty()
        report = download.download_images(
            ids, tmp_dir, api_base=self.api_base, rate=self.download_rate, downsample=params.get("downsample"),
            quality=params.get("quality"), region=Region(**region) if region else None, progress=progress)
        print(report.summary(), flush=True)
        if report.ok:
            return
        if report.disk_full:  # tiling what came before it would build a part of the dataset, and exit 0
            raise OSError(errno.ENOSPC, f"the Allen download into --tmp_dir={tmp_dir} stopped, nothing was tiled: "
                                        f"{report.disk_full}")
        reasons = "; ".join(f"{n} x {reason}" for reason, n in failure_reasons(report).most_common(3))
        if not list_images(tmp_dir):
            raise MissingInputError(
                f"none of the {count(len(ids), 'Allen image')} could be downloaded into --tmp_dir={tmp_dir} "
                f"({reasons}): check the network and {self.api_base}, then run the same command again")
        log.warning("%d of %d Allen images could not be downloaded (%s); tiling the %d in %s (run again to retry "
                    "the missing ones)", len(report.missing), len(ids), reasons, len(list_images(tmp_dir)), tmp_dir)


def failure_reasons(report) -> Counter:
    """A download's failures grouped by reason, the image id taken out ("image <id> not found ... (404)")."""
    return Counter(re.sub(rf"\b{image_id}\b", "<id>", message) for image_id, message in report.failed.items())


def describe_params(params) -> str:
    """Download settings in words: "full resolution", "downsample 1, quality 50", ..."""
    params = params if isinstance(params, dict) else {}
    parts = [f"downsample {params['downsample']}" if params.get("downsample") else "full resolution"]
    parts += [f"{name} {params[name]}" for name in ("quality", "region") if params.get(name) is not None]
    return ", ".join(parts)


def warn_mixed_settings(tmp_dir: str, entries: dict, paths: list[str]) -> None:
    """One warning line when the images to tile were downloaded with different settings (say, full resolution and
    downsample 1: cells of two sizes in one training set)."""
    names = {os.path.basename(path) for path in paths}
    settings = Counter(describe_params(entry.get("params")) for image_id, entry in entries.items()
                       if f"{image_id}.jpg" in names)
    if len(settings) > 1:
        counts = ", ".join(f"{n} at {setting}" for setting, n in settings.most_common())
        log.warning("--tmp_dir=%s mixes images downloaded with different settings (%s): their cells differ in size; "
                    "keep one setting per folder (allen-sr download --downsample)", tmp_dir, counts)
