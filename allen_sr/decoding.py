"""Autoregressive decoding of the Image Transformer (`img2img_transformer`), naive and fast.

tensor2tensor's own `t2t-decoder` cannot decode `img2img_transformer` (its inference path crashes
in `get_channel_embeddings`, upstream issue #1797), and predicting with all-zero targets in one
pass is wrong: every sub-pixel must be conditioned on the values already chosen for the sub-pixels
before it. Two decoders do that here:

* :class:`NaiveDecoder` is the reference. It builds the real t2t model graph in EVAL mode (no
  dropout), restores a `t2t-trainer` checkpoint, and fills the canvas one sub-pixel at a time in
  the model's causal order (row, column, channel), feeding the whole canvas as teacher-forced
  `targets` and running one full forward pass per sub-pixel: 3072 passes for a 32x32x3 image.
* :class:`FastDecoder` re-implements the same network in NumPy, incrementally: the encoder runs
  once per batch, then each decoder step processes only the new position with per-layer
  key/value caches, attending exactly to the window of t2t's `masked_local_attention_1d`.
  Weights are read from the same checkpoint by name. It supports exactly the hparams our sets
  use (see :func:`check_supported`) and refuses anything else with an
  :class:`UnsupportedHParamsError` naming the hparam.

Both take the same modes (:data:`MODES`): ``greedy`` (argmax), ``sample`` (softmax with a
temperature, seeded, reproducible and independent of the batch size) and ``mean`` (the expected
value of each 256-way distribution, rounded, fed back as the conditioning value).

Precision: the fast decoder computes in float32 by default, like the TF graph it mirrors (the
model was trained in float32, so float32 rounding is already part of its behaviour); its logits
agree with TF's to ~1e-5 and greedy outputs differ only where two values' logits tie to that
level. ``dtype="float64"`` is available and about as fast for small models.

`allen-sr decode` (:func:`decode_main`) reads dev examples through the problem's own input
pipeline (:func:`read_examples`), decodes them and writes PNGs, a comparison grid and PSNR/SSIM
tables. Decoders are looked up by model name in :data:`DECODERS`, so another model can plug in
its own (e.g. one-pass) decoder with :func:`register_decoder`.

TensorFlow and tensor2tensor are imported inside the functions that need them, so importing this
module is cheap.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tensor2tensor.utils.hparam import HParams

__all__ = [
    "DECODERS",
    "MODES",
    "Decoder",
    "FastDecoder",
    "NaiveDecoder",
    "UnsupportedHParamsError",
    "check_supported",
    "choose_values",
    "decode_main",
    "find_checkpoint",
    "load_hparams",
    "make_decoder",
    "read_examples",
    "register_decoder",
    "run_decode",
]

MODES: tuple[str, ...] = ("greedy", "sample", "mean")
VOCAB = 256  # values per sub-pixel (uint8)
DEFAULT_MODEL = "img2img_transformer"
# allen_sr.t2t_models: img2img_transformer plus the input skip (hparam input_skip) into the decoder.
SKIP_MODEL = "img2img_transformer_sr"
TRANSFORMER_MODELS = (DEFAULT_MODEL, SKIP_MODEL)


class UnsupportedHParamsError(ValueError):
    """The fast decoder does not implement this hparams setting (names the hparam and what works)."""


# --------------------------------------------------------------------------- shared helpers


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=-1, keepdims=True)


def choose_values(
    logits: np.ndarray,
    mode: str,
    temperature: float = 1.0,
    uniforms: np.ndarray | None = None,
) -> np.ndarray:
    """Pick one value in 0..255 per row of ``logits`` [B, 256]; returns int64 [B].

    ``greedy``: argmax (first index on exact ties, like ``np.argmax``). ``mean``: the expected
    value sum_v v * softmax(logits)_v, rounded to the nearest integer. ``sample``: a draw from
    softmax(logits / temperature) by inverse CDF with the given ``uniforms`` [B] in [0, 1), so
    both decoders turn the same uniforms into the same samples.
    """
    if mode == "greedy":
        return np.argmax(logits, axis=-1).astype(np.int64)
    if mode == "mean":
        probs = _softmax(logits)
        expected = probs @ np.arange(VOCAB, dtype=np.float64)
        return np.clip(np.rint(expected), 0, VOCAB - 1).astype(np.int64)
    if mode == "sample":
        if uniforms is None:
            raise ValueError("mode 'sample' needs uniforms (one per row)")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
        probs = _softmax(np.asarray(logits, np.float64) / float(temperature))
        cdf = np.cumsum(probs, axis=-1)
        index = (cdf < np.asarray(uniforms)[:, None] * cdf[:, -1:]).sum(axis=-1)
        return np.minimum(index, VOCAB - 1).astype(np.int64)
    raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")


def _check_mode(mode: str, temperature: float) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if mode == "sample" and not temperature > 0:
        raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")


def _example_uniforms(seed: int | None, indices: Sequence[int], steps: int) -> np.ndarray:
    """[len(indices), steps] uniforms, one stream per example index.

    Seeding each example separately (SeedSequence of (seed, index)) makes a sample depend only on
    the seed and the example's position in the dataset, not on the batch size or the decoder.
    """
    base = 0 if seed is None else int(seed)
    streams = [np.random.default_rng([base, int(i)]).random(steps) for i in indices]
    return np.stack(streams) if streams else np.zeros((0, steps))


def _progress(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", mininterval=0.5, smoothing=0.1)


def _as_batch(inputs: Any, channels: int) -> np.ndarray:
    arr = np.asarray(inputs)
    if arr.ndim != 4 or arr.shape[-1] != channels:
        raise ValueError(f"inputs must be [N, H, W, {channels}], got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= VOCAB):
        raise ValueError("inputs must hold values in 0..255")
    return arr.astype(np.int64)


_OPENBLAS: Any = False  # not looked up yet


def _openblas_thread_functions() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """(get, set) for the number of threads of numpy's bundled OpenBLAS, or None if not found."""
    global _OPENBLAS
    if _OPENBLAS is False:
        _OPENBLAS = None
        try:
            import ctypes
            import glob

            libs_dir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
            libs = glob.glob(os.path.join(libs_dir, "libopenblas*"))
            if libs:
                lib = ctypes.CDLL(libs[0])  # the already loaded library: dlopen returns the same handle
                for suffix in ("64_", ""):
                    get = getattr(lib, f"openblas_get_num_threads{suffix}", None)
                    set_ = getattr(lib, f"openblas_set_num_threads{suffix}", None)
                    if get is not None and set_ is not None:
                        _OPENBLAS = (get, set_)
                        break
        except OSError:
            pass
    return _OPENBLAS


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Run numpy's BLAS on one thread inside the block (no-op if it cannot be controlled).

    A decoding step is many tiny products ([8, 256] x [256, 1024] at most); OpenBLAS's threading
    costs more than it gains on them: measured 2-3x slower attention with 2 threads on 2 cores.
    """
    functions = _openblas_thread_functions()
    if functions is None:
        yield
        return
    get, set_ = functions
    previous = int(get())
    set_(1)
    try:
        yield
    finally:
        set_(previous)


class Decoder(Protocol):
    """What `allen-sr decode` needs from a decoder."""

    def decode(
        self,
        inputs: np.ndarray,
        mode: str = "greedy",
        temperature: float = 1.0,
        seed: int | None = None,
        batch_size: int | None = None,
        max_steps: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Decode [N, h, w, C] uint8 inputs to [N, H, W, C] uint8 predictions."""
        ...


class _BatchedDecoder:
    """Batching, progress and per-example sampling streams shared by both decoders."""

    channels: int
    target_shape: tuple[int, int]
    name = "decoder"

    def _decode_batch(
        self,
        inputs: np.ndarray,
        choose: Callable[[int, np.ndarray], np.ndarray],
        steps: int,
        bar: Any,
    ) -> np.ndarray:
        raise NotImplementedError

    def decode(
        self,
        inputs: np.ndarray,
        mode: str = "greedy",
        temperature: float = 1.0,
        seed: int | None = None,
        batch_size: int | None = None,
        max_steps: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Decode [N, h, w, C] inputs autoregressively; returns uint8 [N, H, W, C].

        Sub-pixels are filled in raster order (row, column, channel). ``max_steps`` stops after
        that many sub-pixels (the rest stay 0), e.g. to compare decoders cheaply. ``batch_size``
        examples are decoded together (default: all). ``seed`` only matters for ``sample``.
        """
        _check_mode(mode, temperature)
        inputs = _as_batch(inputs, self.channels)
        rows, cols = self.target_shape
        total = rows * cols * self.channels
        steps = total if max_steps is None else max(0, min(int(max_steps), total))
        n = inputs.shape[0]
        batch_size = n if not batch_size else int(batch_size)
        out = np.zeros((n, rows, cols, self.channels), np.uint8)
        bar = _progress(steps * math.ceil(n / max(batch_size, 1)), progress, f"{self.name} {mode}")
        try:
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                uniforms = (
                    _example_uniforms(seed, range(start, stop), steps) if mode == "sample" else None
                )

                def choose(step: int, logits: np.ndarray, _u: np.ndarray | None = uniforms) -> np.ndarray:
                    return choose_values(
                        logits, mode, temperature, None if _u is None else _u[:, step]
                    )

                out[start:stop] = self._decode_batch(inputs[start:stop], choose, steps, bar)
        finally:
            if bar is not None:
                bar.close()
        return out


# --------------------------------------------------------------------------- hparams & checkpoints


def _import_registrations() -> None:
    """Shims, our hparams sets and problems, and the t2t image models, registered with t2t."""
    from allen_sr import t2t_compat

    t2t_compat.apply()
    import allen_sr.hparams  # noqa: F401
    import allen_sr.problems  # noqa: F401
    from tensor2tensor.models import image_transformer_2d  # noqa: F401


def load_hparams(
    hparams_set: str,
    problem: Any,
    overrides: str = "",
    output_dir: str | os.PathLike[str] | None = None,
) -> "HParams":
    """The model hparams exactly as `t2t-trainer` builds them.

    Starts from the registered ``hparams_set``, then applies ``output_dir/hparams.json`` if the
    trainer wrote one (so a checkpoint is read with the hparams it was trained with), then the
    ``overrides`` string ("k=v,..."), then the problem's hparams (``problem`` is a registered name
    or a Problem instance; it sets modalities, and for our problems `img_len`/`num_channels`).
    """
    _import_registrations()
    from tensor2tensor.utils import hparams_lib

    hparams_path = os.path.join(os.fspath(output_dir), "hparams.json") if output_dir else None
    hparams = hparams_lib.create_hparams(hparams_set, overrides, hparams_path=hparams_path)
    hparams_lib.add_problem_hparams(hparams, problem)
    return hparams


def find_checkpoint(path: str | os.PathLike[str]) -> str:
    """The newest checkpoint in an output dir, or ``path`` itself if it is a checkpoint prefix."""
    import tensorflow as tf

    path = os.fspath(path)
    if os.path.isdir(path):
        ckpt = tf.train.latest_checkpoint(path)
        if ckpt is None:
            raise FileNotFoundError(
                f"no checkpoint in {path} (expected a 'checkpoint' file from t2t-trainer)")
        return ckpt
    if os.path.exists(path + ".index"):
        return path
    raise FileNotFoundError(f"{path} is neither an output dir with checkpoints nor a checkpoint prefix")


def canonical_variable_name(name: str) -> str:
    """A checkpoint variable's name without the data-parallelism name scope.

    In TF 2.15 graph mode, t2t's Keras-style dense layers take their variable names from the name
    scope, so `t2t-trainer` writes e.g.
    ``img2img_transformer/parallel_0_4/img2img_transformer/img2img_transformer/body/...``; the
    ``parallel_0_4`` counter depends on how many ops were built before the model. This returns
    ``img2img_transformer/body/...`` so that names match however the graph was built.
    """
    name = name.split(":")[0]
    return re.sub(r"^([^/]+)/parallel_\d+(?:_\d+)*/(?:\1/)+", r"\1/", name)


def _checkpoint_name_map(names: Sequence[str], model_name: str) -> dict[str, str]:
    """{canonical name: checkpoint name} for the model's variables (optimizer slots excluded)."""
    mapping: dict[str, str] = {}
    for name in names:
        if not name.startswith(model_name + "/"):
            continue  # global_step, optimizer slots ("training/..."), loss averages
        key = canonical_variable_name(name)
        if key in mapping and mapping[key] != name:
            raise ValueError(f"checkpoint variables {mapping[key]} and {name} both map to {key}")
        mapping[key] = name
    return mapping


# --------------------------------------------------------------------------- naive (reference) decoder


# Decoder self-attention types whose mask is causal in plain raster order (row, column, channel).
# "global" is not: the image decoder passes no bias to it, so every position sees the future.
_RASTER_CAUSAL = ("local_1d", "rel_local_1d")


def _check_raster_causal(hparams: "HParams") -> None:
    """Decoding in raster order is only valid when the model is causal in that order."""
    if hparams.dec_attention_type not in _RASTER_CAUSAL or hparams.block_raster_scan:
        raise UnsupportedHParamsError(
            f"raster-order decoding needs dec_attention_type in {_RASTER_CAUSAL} and "
            f"block_raster_scan=False, got dec_attention_type={hparams.dec_attention_type!r}, "
            f"block_raster_scan={hparams.block_raster_scan!r}")
    if getattr(hparams, "likelihood", "cat") != "cat":
        raise UnsupportedHParamsError(
            f"decoding supports likelihood='cat' (256-way softmax) only, got {hparams.likelihood!r}")


class NaiveDecoder(_BatchedDecoder):
    """The real t2t model graph (EVAL mode), one full forward pass per decoded sub-pixel.

    Slow by construction (3072 forward passes for a 32x32x3 image) and meant as the reference
    the fast decoder is tested against. ``target_shape`` (rows, cols) defaults to
    ``hparams.img_len`` square; the model itself accepts other sizes.
    """

    name = "naive"

    def __init__(
        self,
        hparams: "HParams",
        checkpoint: str,
        model_name: str = DEFAULT_MODEL,
        target_shape: tuple[int, int] | None = None,
    ) -> None:
        _check_raster_causal(hparams)
        _import_registrations()
        import tensorflow as tf
        from tensor2tensor.utils import registry
        from tensorflow.python.autograph.core import ag_ctx

        self.channels = int(hparams.num_channels)
        self.target_shape = tuple(target_shape or (hparams.img_len, hparams.img_len))  # type: ignore[assignment]
        rows, cols = self.target_shape
        self._graph = tf.Graph()
        with self._graph.as_default():
            v1 = tf.compat.v1
            model = registry.model(model_name)(hparams, tf.estimator.ModeKeys.EVAL)
            self._inputs = v1.placeholder(tf.int32, [None, None, None, self.channels], "inputs")
            self._targets = v1.placeholder(tf.int32, [None, rows, cols, self.channels], "targets")
            self._position = v1.placeholder(tf.int32, [], "position")
            # Keras' legacy Layer.__call__ would run all of t2t's (TF1, Python-control-flow)
            # model code through AutoGraph, which only rewrites Python `if`/`for` on Python
            # values here and costs ~20-30 s per graph; the ops built are the same without it.
            with ag_ctx.ControlStatusCtx(status=ag_ctx.Status.DISABLED):
                logits, _ = model({"inputs": self._inputs, "targets": self._targets})
            # [B, rows, cols, C, 256]; gather one position in-graph so each step copies 256
            # floats per example out of TF instead of the whole logits tensor.
            self._logits = logits
            flat = tf.reshape(logits, [tf.shape(logits)[0], rows * cols * self.channels, VOCAB])
            self._step_logits = tf.gather(flat, self._position, axis=1)
            var_list = self._match_variables(v1.global_variables(), checkpoint, model_name)
            saver = v1.train.Saver(var_list=var_list)
            self._session = v1.Session(graph=self._graph)
            # Inside the graph context: outside it (eager by default in TF 2) the Saver would
            # try to build its restore ops eagerly and fail.
            saver.restore(self._session, checkpoint)

    @staticmethod
    def _match_variables(variables: Sequence[Any], checkpoint: str, model_name: str) -> dict[str, Any]:
        import tensorflow as tf

        ckpt_names = _checkpoint_name_map(
            [n for n, _ in tf.train.list_variables(checkpoint)], model_name
        )
        var_list: dict[str, Any] = {}
        missing = []
        for var in variables:
            key = canonical_variable_name(var.op.name)
            if key not in ckpt_names:
                missing.append(var.op.name)
            else:
                var_list[ckpt_names[key]] = var
        if missing:
            raise ValueError(
                f"checkpoint {checkpoint} lacks {len(missing)} model variable(s), e.g. {missing[:3]}: "
                "was it trained with this --model/--hparams_set/--hparams?"
            )
        return var_list

    def logits(self, inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Teacher-forced logits [B, rows, cols, C, 256] of one forward pass on ``targets``."""
        return self._session.run(
            self._logits, {self._inputs: np.asarray(inputs), self._targets: np.asarray(targets)}
        )

    def step_logits(self, inputs: np.ndarray, canvas: np.ndarray, position: int) -> np.ndarray:
        """Logits [B, 256] at flat sub-pixel ``position`` given the current canvas."""
        return self._session.run(
            self._step_logits,
            {self._inputs: inputs, self._targets: canvas, self._position: int(position)},
        )

    def _decode_batch(self, inputs, choose, steps, bar):
        rows, cols = self.target_shape
        canvas = np.zeros((inputs.shape[0], rows, cols, self.channels), np.int32)
        flat = canvas.reshape(inputs.shape[0], -1)  # a view: writes land in canvas
        for p in range(steps):
            flat[:, p] = choose(p, self.step_logits(inputs, canvas, p))
            if bar is not None:
                bar.update(1)
        return canvas.astype(np.uint8)

    def close(self) -> None:
        """Release the TF session."""
        self._session.close()


# --------------------------------------------------------------------------- fast (NumPy) decoder


def check_supported(hparams: "HParams", model_name: str = DEFAULT_MODEL) -> None:
    """Raise :class:`UnsupportedHParamsError` unless the fast decoder implements these hparams.

    It implements `img2img_transformer` with masked local 1-D decoder self-attention in raster
    order, global encoder self-attention, layer norm, sinusoidal ("timing") positions, the
    dense-ReLU-dense FFN, image channel embeddings and the 256-way categorical output.
    """
    from tensor2tensor.layers import modalities

    def need(name: str, value: Any, supported: Any, why: str = "") -> None:
        ok = value in supported if isinstance(supported, (tuple, list, set)) else value == supported
        if not ok:
            many = isinstance(supported, (tuple, list, set))
            shown = " or ".join(map(repr, supported)) if many else repr(supported)
            raise UnsupportedHParamsError(
                f"the fast decoder does not support {name}={value!r} (supported: {shown})"
                + (f"; {why}" if why else "")
                + "; use --decoder naive for other settings"
            )

    need("model", model_name, TRANSFORMER_MODELS)
    need("dec_attention_type", hparams.dec_attention_type, "local_1d",
         "decoding must be masked local 1-D attention in raster order")
    need("block_raster_scan", bool(hparams.block_raster_scan), False)
    need("enc_attention_type", hparams.enc_attention_type, "global")
    need("likelihood", getattr(hparams, "likelihood", "cat"), "cat", "DMOL outputs are not decoded")
    need("q_filter_width", hparams.q_filter_width, 1)
    need("kv_filter_width", hparams.kv_filter_width, 1)
    need("ffn_layer", hparams.ffn_layer, ("conv_hidden_relu", "none"))
    need("norm_type", hparams.norm_type, ("layer", "none"))
    need("pos", hparams.pos, "timing")
    need("shared_rel", bool(getattr(hparams, "shared_rel", False)), False)
    need("activation_dtype", getattr(hparams, "activation_dtype", "float32"), "float32")
    need("weight_dtype", getattr(hparams, "weight_dtype", "float32"), "float32")
    for name in ("layer_preprocess_sequence", "layer_postprocess_sequence"):
        seq = getattr(hparams, name)
        allowed = "nd" if name == "layer_preprocess_sequence" else "and"
        if seq != "none" and any(c not in allowed for c in seq):
            raise UnsupportedHParamsError(
                f"the fast decoder does not support {name}={seq!r} (supported: 'none' or letters "
                f"from {allowed!r}); use --decoder naive for other settings")
    if int(hparams.hidden_size) // 4 < 2:
        raise UnsupportedHParamsError(
            f"the fast decoder does not support hidden_size={hparams.hidden_size} "
            "(supported: >= 8, the 2-D timing signal needs 2 timescales per axis)")
    key_depth = hparams.attention_key_channels or hparams.hidden_size
    value_depth = hparams.attention_value_channels or hparams.hidden_size
    for name, depth in (("attention_key_channels", key_depth), ("attention_value_channels", value_depth)):
        if depth % hparams.num_heads:
            raise UnsupportedHParamsError(
                f"{name}={depth} is not divisible by num_heads={hparams.num_heads}")
    # Bottoms/top: the image channel embeddings for both features and the identity top, as in
    # img2img_transformer2d_base; anything else would need other weights and another output.
    bottom = getattr(hparams, "bottom", {}) or {}
    top = getattr(hparams, "top", {}) or {}
    if bottom.get("inputs") is not modalities.image_channel_embeddings_bottom:
        raise UnsupportedHParamsError(
            "the fast decoder supports bottom['inputs'] = modalities.image_channel_embeddings_bottom "
            f"only, got {bottom.get('inputs')!r}")
    target_bottom = bottom.get("targets")
    cells = [c.cell_contents for c in (getattr(target_bottom, "__closure__", None) or ())]
    if modalities.image_channel_embeddings_bottom not in cells:
        raise UnsupportedHParamsError(
            "the fast decoder supports bottom['targets'] = make_targets_bottom("
            f"image_channel_embeddings_bottom) only, got {target_bottom!r}")
    if top.get("targets") is not modalities.identity_top:
        raise UnsupportedHParamsError(
            "the fast decoder supports top['targets'] = modalities.identity_top only, "
            f"got {top.get('targets')!r}")


def timing_signal_2d(rows: int, cols: int, channels: int, dtype: Any = np.float32) -> np.ndarray:
    """t2t's `add_timing_signal_nd` signal for a [rows, cols] grid: [rows, cols, channels].

    Computed in float32 with the same operations as TF (timescales from exp of a float32 range),
    so it matches TF's signal to float32 rounding of sin/cos.
    """
    num_dims = 2
    num_timescales = channels // (num_dims * 2)
    increment = np.float32(math.log(1.0e4 / 1.0)) / (np.float32(num_timescales) - np.float32(1))
    inv = np.exp(np.arange(num_timescales, dtype=np.float32) * -np.float32(increment)).astype(np.float32)
    signal = np.zeros((rows, cols, channels), np.float32)
    for dim, length in enumerate((rows, cols)):
        scaled = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
        part = np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1)  # [length, 2*nt]
        lo = dim * 2 * num_timescales
        if dim == 0:
            signal[:, :, lo:lo + 2 * num_timescales] += part[:, None, :]
        else:
            signal[:, :, lo:lo + 2 * num_timescales] += part[None, :, :]
    return signal.astype(dtype)


class _Namer:
    """Reproduces TF's unique names for `variable_scope(None, default_name=...)` within a scope."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}

    def __call__(self, scope: str, base: str) -> str:
        n = self._counts.get((scope, base), 0)
        self._counts[(scope, base)] = n + 1
        return f"{scope}/{base}" if n == 0 else f"{scope}/{base}_{n}"


@dataclass
class _PrePost:
    """One `layer_prepostprocess` call: its sequence and the layer norms it uses, in order."""

    sequence: str
    norms: list[tuple[np.ndarray, np.ndarray]]


@dataclass
class _Attention:
    wq: np.ndarray
    wk: np.ndarray
    wv: np.ndarray
    wo: np.ndarray
    w_qkv: np.ndarray  # [H, 2*key_depth + value_depth]: q, k, v in one matmul per step


@dataclass
class _Ffn:
    w1: np.ndarray | None
    b1: np.ndarray | None
    w2: np.ndarray | None
    b2: np.ndarray | None


@dataclass
class _Layer:
    """One encoder layer: self-attention and FFN, each wrapped in pre/postprocess."""

    self_pre: _PrePost
    self_att: _Attention
    self_post: _PrePost
    ffn_pre: _PrePost
    ffn: _Ffn
    ffn_post: _PrePost


@dataclass
class _DecoderLayer(_Layer):
    """A decoder layer adds encoder-decoder attention between self-attention and FFN."""

    encdec_pre: _PrePost
    encdec_att: _Attention
    encdec_post: _PrePost


class FastDecoder(_BatchedDecoder):
    """Incremental NumPy re-implementation of `img2img_transformer` for exact, fast decoding.

    Construct with :meth:`from_checkpoint` (reads the variables by name from a t2t checkpoint)
    or directly from a ``{variable name: array}`` mapping. The network is the one t2t builds for
    the hparams accepted by :func:`check_supported`:

    * bottoms: per-channel embeddings (256*C rows, scaled by sqrt(hidden)), giving [B, h, w*C, H]
      for the inputs and [B, rows, cols*C, H] for the targets;
    * decoder input: targets shifted right by one sub-pixel (`shift_right_3d`), then the 2-D
      timing signal on the [rows, cols*C] grid; the encoder adds it on [h, w*C];
    * each layer: preprocess -> attention -> postprocess (residual), encoder-decoder attention
      likewise, then the dense-ReLU-dense FFN; a final preprocess; `output_conv` to 256 logits;
    * decoder self-attention is `masked_local_attention_1d`: with block length b (b = length if
      length < 2b), a query in block n sees keys of block n-1 and its own block up to itself.

    Keys and values of that window are cached per layer in a 2-block buffer, so each step costs
    O(window) instead of a whole forward pass.
    """

    name = "fast"

    def __init__(
        self,
        hparams: "HParams",
        weights: Mapping[str, np.ndarray],
        model_name: str = DEFAULT_MODEL,
        target_shape: tuple[int, int] | None = None,
        dtype: str | np.dtype = "float32",
    ) -> None:
        check_supported(hparams, model_name)
        self.dtype = np.dtype(dtype)
        self.channels = int(hparams.num_channels)
        self.target_shape = tuple(target_shape or (hparams.img_len, hparams.img_len))  # type: ignore[assignment]
        self.hidden = int(hparams.hidden_size)
        self.heads = int(hparams.num_heads)
        self.key_depth = int(hparams.attention_key_channels or hparams.hidden_size)
        self.value_depth = int(hparams.attention_value_channels or hparams.hidden_size)
        self.block_length = int(hparams.block_length)
        self.epsilon = float(hparams.norm_epsilon)
        self._epsilon = self.dtype.type(self.epsilon)
        self._inv_hidden = self.dtype.type(1.0 / self.hidden)
        self.norm_type = hparams.norm_type
        self.ffn_type = hparams.ffn_layer
        self.pre_seq = hparams.layer_preprocess_sequence
        self.post_seq = hparams.layer_postprocess_sequence
        self._weights = {canonical_variable_name(k): v for k, v in weights.items()}
        self._model = model_name
        self.input_skip = model_name == SKIP_MODEL and bool(getattr(hparams, "input_skip", False))
        self.normalize = model_name == SKIP_MODEL and bool(getattr(hparams, "normalize_inputs", False))
        self._used: set[str] = set()
        self._load(int(hparams.num_encoder_layers), int(hparams.num_decoder_layers))

    @classmethod
    def from_checkpoint(
        cls,
        hparams: "HParams",
        checkpoint: str,
        model_name: str = DEFAULT_MODEL,
        target_shape: tuple[int, int] | None = None,
        dtype: str | np.dtype = "float32",
    ) -> "FastDecoder":
        """Read the model's variables from a t2t checkpoint (prefix or output dir) by name."""
        check_supported(hparams, model_name)  # fail before reading anything
        import tensorflow as tf

        checkpoint = find_checkpoint(checkpoint)
        reader = tf.train.load_checkpoint(checkpoint)
        names = _checkpoint_name_map(list(reader.get_variable_to_shape_map()), model_name)
        weights = {key: reader.get_tensor(name) for key, name in names.items()}
        return cls(hparams, weights, model_name, target_shape, dtype)

    # ---- weights

    def _get(self, name: str) -> np.ndarray:
        key = f"{self._model}/{name}"
        if key not in self._weights:
            near = sorted(k for k in self._weights if k.rsplit("/", 1)[0] == key.rsplit("/", 1)[0])
            raise KeyError(
                f"variable {key} not in the checkpoint"
                + (f" (same scope has: {near})" if near else "")
                + "; do the hparams (layers, sequences, sizes) match the trained model?")
        self._used.add(key)
        return np.asarray(self._weights[key], dtype=self.dtype)

    def _find_embedding(self, targets: bool) -> np.ndarray:
        # The bottom's scope is named after the problem's modality ("identity_modality" for our
        # problems), so find the one embedding of each kind rather than hard-coding the scope.
        suffix = "rgb_target_emb_input_bottom"
        found = [
            k for k in self._weights
            if k.startswith(self._model + "/") and k.endswith("/" + suffix)
            and ("/targets_bottom/" in k) == targets
        ]
        if len(found) != 1:
            kind = "target" if targets else "input"
            raise KeyError(f"expected one {kind} embedding '*/{suffix}', found {found}")
        return self._get(found[0][len(self._model) + 1:])

    def _prepost(self, namer: _Namer, scope: str, sequence: str, pre: bool) -> _PrePost:
        sub = namer(scope, "layer_prepostprocess" if pre else "layer_postprocess")
        norms = []
        if sequence != "none" and self.norm_type == "layer":
            norm_namer = _Namer()
            for c in sequence:
                if c == "n":
                    ln = norm_namer(sub, "layer_norm")
                    norms.append((self._get(f"{ln}/layer_norm_scale"), self._get(f"{ln}/layer_norm_bias")))
        return _PrePost(sequence, norms)

    def _attention(self, scope: str) -> _Attention:
        wq, wk, wv, wo = (self._get(f"{scope}/{n}/kernel") for n in ("q", "k", "v", "output_transform"))
        return _Attention(wq, wk, wv, wo, np.concatenate([wq, wk, wv], axis=1))

    def _ffn(self, scope: str) -> _Ffn:
        if self.ffn_type == "none":
            return _Ffn(None, None, None, None)
        return _Ffn(self._get(f"{scope}/ffn/conv1/kernel"), self._get(f"{scope}/ffn/conv1/bias"),
                    self._get(f"{scope}/ffn/conv2/kernel"), self._get(f"{scope}/ffn/conv2/bias"))

    def _load(self, num_encoder_layers: int, num_decoder_layers: int) -> None:
        # get_channel_embeddings multiplies the table by sqrt(hidden_size).
        emb_scale = np.asarray(self.hidden ** 0.5, self.dtype)
        self.input_embedding = self._find_embedding(targets=False) * emb_scale
        self.target_embedding = self._find_embedding(targets=True) * emb_scale
        expected = (VOCAB * self.channels, self.hidden)
        for emb in (self.input_embedding, self.target_embedding):
            if emb.shape != expected:
                raise ValueError(f"embedding has shape {emb.shape}, expected {expected} "
                                 f"for num_channels={self.channels}")
        if self.normalize:  # t2t_models.normalized_input_term
            self.norm_mean = self._get("body/input_normalization/mean")
            self.norm_std = self._get("body/input_normalization/std")
            self.norm_kernel = self._get("body/normalized_inputs/kernel")  # [1, H]
            self.norm_bias = self._get("body/normalized_inputs/bias")
        namer = _Namer()
        self.encoder: list[_Layer] = []
        for i in range(num_encoder_layers):
            scope = f"body/encoder_layer_{i}"
            self_pre = self._prepost(namer, scope, self.pre_seq, True)
            att = self._attention(f"{scope}/self_att/self_att")
            self_post = self._prepost(namer, scope, self.post_seq, False)
            ffn_pre = self._prepost(namer, scope, self.pre_seq, True)
            ffn = self._ffn(scope)
            ffn_post = self._prepost(namer, scope, self.post_seq, False)
            self.encoder.append(_Layer(self_pre, att, self_post, ffn_pre, ffn, ffn_post))
        self.encoder_final = self._prepost(namer, "body", self.pre_seq, True)
        self.decoder: list[_DecoderLayer] = []
        for i in range(num_decoder_layers):
            scope = f"body/decoder_layer_{i}"
            self_pre = self._prepost(namer, scope, self.pre_seq, True)
            att = self._attention(f"{scope}/local_1d_self_att/self_attention")
            self_post = self._prepost(namer, scope, self.post_seq, False)
            encdec_pre = self._prepost(namer, scope, self.pre_seq, True)
            encdec = self._attention(f"{scope}/encdec_attention/encdec_attention")
            encdec_post = self._prepost(namer, scope, self.post_seq, False)
            ffn_pre = self._prepost(namer, scope, self.pre_seq, True)
            ffn = self._ffn(scope)
            ffn_post = self._prepost(namer, scope, self.post_seq, False)
            self.decoder.append(_DecoderLayer(self_pre, att, self_post, ffn_pre, ffn, ffn_post,
                                              encdec_pre, encdec, encdec_post))
        self.decoder_final = self._prepost(namer, "body", self.pre_seq, True)
        self.out_kernel = self._get("body/output_conv/kernel")
        self.out_bias = self._get("body/output_conv/bias")
        if self.out_kernel.shape != (self.hidden, VOCAB):
            raise UnsupportedHParamsError(
                f"output_conv kernel has shape {self.out_kernel.shape}, expected {(self.hidden, VOCAB)} "
                "(the categorical 256-way output)")
        # Model variables the network above never read mean the hparams describe a different
        # model than the checkpoint holds (e.g. fewer layers): refuse rather than decode garbage.
        unused = sorted(k for k in self._weights if k.startswith(self._model + "/") and k not in self._used)
        if unused:
            raise ValueError(
                f"{len(unused)} checkpoint variable(s) unused by these hparams, e.g. {unused[:3]}; "
                "do num_encoder_layers/num_decoder_layers and the pre/postprocess sequences match training?")
        del self._weights  # only the arrays referenced above are kept

    # ---- building blocks (x: [..., H])

    def _layer_norm(self, x: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
        # ufunc reductions instead of x.mean(): same arithmetic, a third of the Python overhead,
        # which dominates a decoding step at these sizes.
        inv = self._inv_hidden
        centred = x - np.add.reduce(x, axis=-1, keepdims=True) * inv
        variance = np.add.reduce(centred * centred, axis=-1, keepdims=True) * inv
        return centred / np.sqrt(variance + self._epsilon) * scale + bias

    def _apply(self, pp: _PrePost, x: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
        """t2t `layer_prepostprocess`: 'a' adds the residual, 'n' normalises, 'd' is dropout (off)."""
        if pp.sequence == "none":
            return x
        norms = iter(pp.norms)
        for c in pp.sequence:
            if c == "a":
                x = x + previous
            elif c == "n" and self.norm_type == "layer":
                scale, bias = next(norms)
                x = self._layer_norm(x, scale, bias)
        return x

    def _ffn_apply(self, ffn: _Ffn, x: np.ndarray) -> np.ndarray:
        if ffn.w1 is None:
            return x
        h = np.maximum(x @ ffn.w1 + ffn.b1, 0)
        return h @ ffn.w2 + ffn.b2

    def _split(self, x: np.ndarray, depth: int) -> np.ndarray:
        """[B, L, depth] -> [B, heads, L, depth/heads]."""
        b, length, _ = x.shape
        return x.reshape(b, length, self.heads, depth // self.heads).transpose(0, 2, 1, 3)

    def _full_attention(self, att: _Attention, x: np.ndarray, memory: np.ndarray) -> np.ndarray:
        """Unmasked multihead attention of x [B, Lq, H] over memory [B, Lk, H] (encoder)."""
        q = self._split(x @ att.wq, self.key_depth) * self.dtype.type((self.key_depth // self.heads) ** -0.5)
        k = self._split(memory @ att.wk, self.key_depth)
        v = self._split(memory @ att.wv, self.value_depth)
        weights = self._softmax(q @ k.transpose(0, 1, 3, 2))
        out = weights @ v  # [B, heads, Lq, dv]
        b, _, length, _ = out.shape
        return out.transpose(0, 2, 1, 3).reshape(b, length, self.value_depth) @ att.wo

    @staticmethod
    def _softmax(logits: np.ndarray) -> np.ndarray:
        e = np.exp(logits - np.maximum.reduce(logits, axis=-1, keepdims=True))
        return e / np.add.reduce(e, axis=-1, keepdims=True)

    def _embed(self, values: np.ndarray, table: np.ndarray) -> np.ndarray:
        """[B, h, w, C] ints -> [B, h, w*C, H]: channel c uses rows c*256 .. c*256+255."""
        offsets = np.arange(self.channels) * VOCAB
        emb = table[values + offsets]  # [B, h, w, C, H]
        b, h, w, c, hidden = emb.shape
        return emb.reshape(b, h, w * c, hidden)

    def _input_features(self, inputs: np.ndarray) -> np.ndarray:
        """The inputs bottom [B, h, w*C, H], plus the normalized-value term when enabled."""
        x = self._embed(np.asarray(inputs, np.int64), self.input_embedding)
        if self.normalize:
            values = (np.asarray(inputs, self.dtype) - self.norm_mean) / self.norm_std
            b, h, w, c = values.shape
            x = x + values.reshape(b, h, w * c, 1) @ self.norm_kernel + self.norm_bias
        return x

    def encode(self, inputs: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Run the encoder; returns per decoder layer the encoder-decoder keys and values.

        Keys are [B*heads, depth/heads, L_enc] (pre-transposed), values [B*heads, L_enc, depth/heads].
        """
        x = self._input_features(inputs)
        b, h, w, hidden = x.shape
        x = (x + timing_signal_2d(h, w, hidden, self.dtype)).reshape(b, h * w, hidden)
        for layer in self.encoder:
            y = self._apply(layer.self_pre, x)
            x = self._apply(layer.self_post, self._full_attention(layer.self_att, y, y), x)
            y = self._apply(layer.ffn_pre, x)
            x = self._apply(layer.ffn_post, self._ffn_apply(layer.ffn, y), x)
        memory = self._apply(self.encoder_final, x)
        kv = []
        length = h * w
        for layer in self.decoder:
            att = layer.encdec_att
            k = self._split(memory @ att.wk, self.key_depth).transpose(0, 1, 3, 2)
            v = self._split(memory @ att.wv, self.value_depth)
            kv.append((np.ascontiguousarray(k).reshape(b * self.heads, -1, length),
                       np.ascontiguousarray(v).reshape(b * self.heads, length, -1)))
        return kv

    def effective_block_length(self, length: int) -> int:
        """`masked_local_attention_1d` uses one block of the whole length if length < 2 * block."""
        return length if length < 2 * self.block_length else self.block_length

    def _steps(
        self, inputs: np.ndarray, next_value: Callable[[int, np.ndarray], np.ndarray], steps: int
    ) -> Iterator[int]:
        """Run the decoder for ``steps`` positions; ``next_value(p, logits)`` gives value p.

        A generator so callers can drive a progress bar; yields each finished position.
        """
        rows, cols = self.target_shape
        c = self.channels
        length = rows * cols * c
        batch = inputs.shape[0]
        dt = self.dtype.type
        encdec_kv = self.encode(inputs)
        timing = timing_signal_2d(rows, cols * c, self.hidden, self.dtype).reshape(length, self.hidden)
        if self.input_skip:
            # t2t_models.upsample_input_embeddings: sub-pixel (r, col, ch) also receives the
            # embedding of input pixel (r // f, col // f), channel ch; it depends on inputs only.
            emb = self._input_features(inputs)
            b, h, wc, hidden = emb.shape
            f = rows // h
            emb = emb.reshape(b, h, 1, wc // c, 1, c, hidden)
            skip = np.broadcast_to(emb, (b, h, f, wc // c, f, c, hidden)).reshape(b, length, hidden)
            timing = timing[None] + skip  # [B, length, H]; indexed per position below
        else:
            timing = np.broadcast_to(timing[None], (batch, length, self.hidden))
        block = self.effective_block_length(length)
        capacity = length if block == length else 2 * block
        dk, dv = self.key_depth // self.heads, self.value_depth // self.heads
        scale = dt(dk ** -0.5)
        # Batch and heads flattened: [B*heads, capacity, d], one stack of small matmuls per step.
        bh = batch * self.heads
        caches = [
            (np.zeros((bh, capacity, dk), self.dtype), np.zeros((bh, capacity, dv), self.dtype))
            for _ in self.decoder
        ]
        kd = self.key_depth
        previous = np.zeros(batch, np.int64)
        for p in range(steps):
            n = p // block
            if block != length and n >= 2 and p % block == 0:
                # A new block starts: its window is the previous block (now in slots block..2b)
                # and itself, so slide the buffer left by one block.
                for k_cache, v_cache in caches:
                    k_cache[:, :block] = k_cache[:, block:]
                    v_cache[:, :block] = v_cache[:, block:]
            slot = p if n == 0 else block + (p - n * block)
            # shift_right_3d: position p sees the embedding of sub-pixel p-1 (zeros at p = 0).
            if p == 0:
                x = np.array(timing[:, 0], dtype=self.dtype)
            else:
                x = self.target_embedding[previous + ((p - 1) % c) * VOCAB] + timing[:, p]
            for layer, (k_cache, v_cache), (ek, ev) in zip(self.decoder, caches, encdec_kv):
                y = self._apply(layer.self_pre, x)
                qkv = y @ layer.self_att.w_qkv
                # [B, heads*d] -> [B*heads, d]: t2t's split_heads puts head h at h*d .. h*d+d-1.
                q = qkv[:, :kd].reshape(bh, 1, dk) * scale
                k_cache[:, slot] = qkv[:, kd:2 * kd].reshape(bh, dk)
                v_cache[:, slot] = qkv[:, 2 * kd:].reshape(bh, dv)
                weights = self._softmax(q @ k_cache[:, :slot + 1].transpose(0, 2, 1))  # [BH, 1, T]
                attended = weights @ v_cache[:, :slot + 1]  # [B*heads, 1, dv]
                y = attended.reshape(batch, self.value_depth) @ layer.self_att.wo
                x = self._apply(layer.self_post, y, x)
                y = self._apply(layer.encdec_pre, x)
                q = (y @ layer.encdec_att.wq).reshape(bh, 1, dk) * scale
                attended = self._softmax(q @ ek) @ ev
                y = attended.reshape(batch, self.value_depth) @ layer.encdec_att.wo
                x = self._apply(layer.encdec_post, y, x)
                y = self._apply(layer.ffn_pre, x)
                x = self._apply(layer.ffn_post, self._ffn_apply(layer.ffn, y), x)
            out = self._apply(self.decoder_final, x)
            logits = out @ self.out_kernel + self.out_bias
            previous = np.asarray(next_value(p, logits), np.int64)
            yield p

    def logits(self, inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Teacher-forced logits [B, rows, cols, C, 256], computed step by step with the caches.

        The same code path as decoding, with each position's value taken from ``targets``; the
        result must equal the full model's forward pass on ``targets`` (tests check this).
        """
        inputs = _as_batch(inputs, self.channels)
        targets = np.asarray(targets, np.int64)
        rows, cols = self.target_shape
        if targets.shape[1:] != (rows, cols, self.channels):
            raise ValueError(f"targets must be [B, {rows}, {cols}, {self.channels}], got {targets.shape}")
        flat = targets.reshape(targets.shape[0], -1)
        out = np.zeros((targets.shape[0], flat.shape[1], VOCAB), np.float32)

        def forced(p: int, logits: np.ndarray) -> np.ndarray:
            out[:, p] = logits
            return flat[:, p]

        with _single_threaded_blas():
            for _ in self._steps(inputs, forced, flat.shape[1]):
                pass
        return out.reshape(targets.shape + (VOCAB,))

    def _decode_batch(self, inputs, choose, steps, bar):
        rows, cols = self.target_shape
        flat = np.zeros((inputs.shape[0], rows * cols * self.channels), np.uint8)

        def pick(p: int, logits: np.ndarray) -> np.ndarray:
            values = choose(p, logits)
            flat[:, p] = values
            return values

        with _single_threaded_blas():
            for _ in self._steps(inputs, pick, steps):
                if bar is not None:
                    bar.update(1)
        return flat.reshape(inputs.shape[0], rows, cols, self.channels)


# --------------------------------------------------------------------------- decoder registry

DecoderFactory = Callable[..., Decoder]

# model name -> {decoder kind: factory(hparams, checkpoint, model_name=..., target_shape=...)}.
# A model with another decoding scheme (e.g. one-pass) registers its own with register_decoder.
DECODERS: dict[str, dict[str, DecoderFactory]] = {
    DEFAULT_MODEL: {"fast": FastDecoder.from_checkpoint, "naive": NaiveDecoder},
    SKIP_MODEL: {"fast": FastDecoder.from_checkpoint, "naive": NaiveDecoder},
}


def register_decoder(model_name: str, kind: str, factory: DecoderFactory) -> None:
    """Make ``factory`` the ``kind`` decoder (e.g. "fast") of ``model_name``."""
    DECODERS.setdefault(model_name, {})[kind] = factory


def make_decoder(
    model_name: str,
    kind: str,
    hparams: "HParams",
    checkpoint: str,
    target_shape: tuple[int, int] | None = None,
) -> Decoder:
    """Build the ``kind`` decoder registered for ``model_name`` (clear errors otherwise)."""
    if model_name not in DECODERS:
        raise NotImplementedError(
            f"decoding --model={model_name} is not supported yet (supported: {', '.join(sorted(DECODERS))})")
    kinds = DECODERS[model_name]
    if kind not in kinds:
        raise NotImplementedError(
            f"--decoder={kind} is not available for --model={model_name} "
            f"(available: {', '.join(sorted(kinds))})")
    return kinds[kind](hparams, find_checkpoint(checkpoint), model_name=model_name, target_shape=target_shape)


# --------------------------------------------------------------------------- reading examples

_SPLITS = {"dev": "eval", "eval": "eval", "train": "train", "test": "test"}


def read_examples(
    problem: Any,
    data_dir: str | os.PathLike[str],
    num_examples: int,
    hparams: "HParams",
    split: str = "dev",
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``num_examples`` examples of a split through the problem's own input pipeline.

    Reads with ``problem.dataset(mode=EVAL, shuffle_files=False)`` and the problem's
    preprocessing, so dev examples are exactly the ones evaluation sees. Returns inputs
    [N, h, w, C] and targets [N, H, W, C] as uint8 (N may be smaller if the split is smaller).
    """
    _import_registrations()
    import tensorflow as tf
    from tensor2tensor.data_generators import problem as problem_lib
    from tensor2tensor.utils import hparams_lib, registry

    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(_SPLITS)}")
    if isinstance(problem, str):
        problem = registry.problem(problem)
    dataset_split = {"eval": problem_lib.DatasetSplit.EVAL, "train": problem_lib.DatasetSplit.TRAIN,
                     "test": problem_lib.DatasetSplit.TEST}[_SPLITS[split]]
    hparams = hparams_lib.copy_hparams(hparams)
    inputs, targets = [], []
    graph = tf.Graph()
    with graph.as_default():
        # A graph seed makes any random op in a problem's eval preprocessing repeatable.
        tf.compat.v1.set_random_seed(0)
        dataset = problem.dataset(
            tf.estimator.ModeKeys.EVAL, data_dir=os.fspath(data_dir), hparams=hparams,
            shuffle_files=False, dataset_split=dataset_split, num_threads=1,
        ).take(num_examples)
        features = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
        with tf.compat.v1.Session(graph=graph) as session:
            while True:
                try:
                    example = session.run({"inputs": features["inputs"], "targets": features["targets"]})
                except tf.errors.OutOfRangeError:
                    break
                inputs.append(example["inputs"])
                targets.append(example["targets"])
    if not inputs:
        raise ValueError(f"no {split} examples of {problem.name} in {data_dir}")
    x, y = np.stack(inputs), np.stack(targets)
    for name, arr in (("inputs", x), ("targets", y)):
        if arr.min() < 0 or arr.max() > 255:
            raise ValueError(f"{name} of {problem.name} hold values outside 0..255")
    return x.astype(np.uint8), y.astype(np.uint8)


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="allen-sr decode",
        description="Decode examples of a problem's split autoregressively with a trained model; "
        "write one PNG per example, grid.png, metrics.csv and metrics.json (PSNR/SSIM of the model "
        "and of bicubic).",
    )
    p.add_argument("--problem", required=True, help="registered problem, e.g. img2img_allen_brain_dim8to32")
    p.add_argument("--model", default=DEFAULT_MODEL, help="t2t model name (default %(default)s)")
    p.add_argument("--hparams_set", required=True, help="e.g. img2img_allen_cpu_tiny")
    p.add_argument("--hparams", default="", help='overrides "k=v,..." (as given to t2t-trainer)')
    p.add_argument("--output_dir", required=True,
                   help="t2t-trainer output dir (its newest checkpoint is used) or a checkpoint prefix")
    p.add_argument("--data_dir", required=True, help="t2t data dir with the problem's records")
    p.add_argument("--dataset_split", default="dev", choices=sorted(_SPLITS), help="default %(default)s")
    p.add_argument("--num_examples", type=int, default=8, help="default %(default)s")
    p.add_argument("--mode", default="greedy", choices=MODES, help="default %(default)s")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature for --mode sample")
    p.add_argument("--seed", type=int, default=0, help="seed for --mode sample (default %(default)s)")
    p.add_argument("--batch_size", type=int, default=8,
                   help="examples decoded together (default %(default)s)")
    p.add_argument("--decoder", default="fast", choices=("fast", "naive"),
                   help="fast: incremental NumPy (default); naive: t2t graph, one pass per sub-pixel")
    p.add_argument("--out", required=True, help="folder for the PNGs and metrics")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


@dataclass
class DecodeResult:
    """What :func:`run_decode` produced."""

    inputs: np.ndarray
    targets: np.ndarray
    predictions: np.ndarray
    summary: dict[str, Any]
    seconds: float
    out_dir: Path


def write_outputs(
    out_dir: str | os.PathLike[str],
    inputs: np.ndarray,
    targets: np.ndarray,
    predictions: np.ndarray,
    protocol_note: str = "",
) -> dict[str, Any]:
    """PNG per example, grid.png, metrics.csv and metrics.json in ``out_dir``; returns the summary."""
    from allen_sr import metrics, pictures

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scale = targets.shape[1] // inputs.shape[1]
    table = metrics.MetricTable()
    rows, captions = [], []
    for i, (lr, pred, hr) in enumerate(zip(inputs, predictions, targets)):
        bicubic = metrics.upscale(lr, scale, "bicubic")
        scores = table.add_images(i, hr, {"bicubic": bicubic, "model": pred})
        pictures.save_png(pred, out / f"example_{i:03d}.png")
        rows.append(pictures.comparison_row(lr, pred, hr))
        captions.append(f"#{i}: model {scores['model'][0]:.2f} dB / bicubic {scores['bicubic'][0]:.2f} dB")
    pictures.save_png(pictures.prediction_grid(rows, captions=captions), out / "grid.png")
    table.write_csv(out / "metrics.csv")
    protocol = metrics.PROTOCOL + (f"; {protocol_note}" if protocol_note else "")
    table.write_json(out / "metrics.json", protocol=protocol)
    return table.summary(protocol)


def _check_registered(problem: str, hparams_set: str) -> None:
    """Short errors for unknown names (t2t's KeyError lists every registered problem)."""
    _import_registrations()
    from tensor2tensor.utils import registry

    if problem not in registry.list_problems():
        ours = sorted(p for p in registry.list_problems() if p.startswith("img2img_"))
        raise ValueError(f"unknown problem {problem!r}; image problems: {', '.join(ours)}")
    if hparams_set not in registry.list_hparams():
        ours = sorted(h for h in registry.list_hparams() if h.startswith(("img2img_allen", "img2img_conv_sr")))
        raise ValueError(f"unknown hparams set {hparams_set!r}; ours: {', '.join(ours)}")


def run_decode(
    problem: str,
    hparams_set: str,
    output_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    model: str = DEFAULT_MODEL,
    hparams_overrides: str = "",
    split: str = "dev",
    num_examples: int = 8,
    mode: str = "greedy",
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    decoder: str = "fast",
    progress: bool = True,
) -> DecodeResult:
    """Everything `allen-sr decode` does, as a function (used by the CLI and the demo)."""
    _check_mode(mode, temperature)
    _import_registrations()  # other models register their decoders when imported
    if model not in DECODERS:
        raise NotImplementedError(
            f"decoding --model={model} is not supported yet (supported: {', '.join(sorted(DECODERS))})")
    _check_registered(problem, hparams_set)
    hparams = load_hparams(hparams_set, problem, hparams_overrides, output_dir)
    checkpoint = find_checkpoint(output_dir)
    inputs, targets = read_examples(problem, data_dir, num_examples, hparams, split)
    dec = make_decoder(model, decoder, hparams, checkpoint, target_shape=tuple(targets.shape[1:3]))
    start = time.perf_counter()
    predictions = dec.decode(inputs, mode=mode, temperature=temperature, seed=seed,
                             batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - start
    note = (f"model = {model} {hparams_set} checkpoint {os.path.basename(checkpoint)}, "
            f"{decoder} autoregressive decoding, mode {mode}"
            + (f" (temperature {temperature}, seed {seed})" if mode == "sample" else "")
            + f", {split} split")
    summary = write_outputs(out_dir, inputs, targets, predictions, note)
    return DecodeResult(inputs, targets, predictions, summary, seconds, Path(out_dir))


def decode_main(argv: Sequence[str] | None = None) -> int:
    """`allen-sr decode ...`: returns the process exit code."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    _import_registrations()  # other models register their decoders when imported
    if args.model not in DECODERS:
        print(f"allen-sr decode: --model={args.model} is not supported yet "
              f"(decoders exist for: {', '.join(sorted(DECODERS))})", file=sys.stderr)
        return 2
    if args.num_examples < 1 or args.batch_size < 1:
        print("allen-sr decode: --num_examples and --batch_size must be >= 1", file=sys.stderr)
        return 2
    try:
        result = run_decode(
            problem=args.problem, hparams_set=args.hparams_set, output_dir=args.output_dir,
            data_dir=args.data_dir, out_dir=args.out, model=args.model,
            hparams_overrides=args.hparams, split=args.dataset_split,
            num_examples=args.num_examples, mode=args.mode, temperature=args.temperature,
            seed=args.seed, batch_size=args.batch_size, decoder=args.decoder,
            progress=not args.no_progress,
        )
    except (UnsupportedHParamsError, NotImplementedError, FileNotFoundError, ValueError, KeyError) as exc:
        print(f"allen-sr decode: {exc}", file=sys.stderr)
        return 2
    from allen_sr import metrics

    n = len(result.predictions)
    print(metrics.summary_to_text(result.summary), end="")
    print(f"decoded {n} example(s) in {result.seconds:.1f} s ({result.seconds / n:.2f} s/image, "
          f"{args.decoder} decoder, mode {args.mode})")
    print(f"wrote {result.out_dir}/example_000.png .. example_{n - 1:03d}.png, grid.png, "
          "metrics.csv, metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(decode_main())
