"""What every decoder shares: the :class:`Decoder` protocol, batching with progress and
per-example sampling streams (:class:`BatchedDecoder`), averaging over the 8 flips/rotations of
the input (:func:`dihedral`), input checks and BLAS threading."""
from __future__ import annotations

import contextlib
import math
import os
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from allen_sr.decoding.modes import VOCAB, check_mode, choose_values, example_uniforms
from allen_sr.evaluation.bicubic import bicubic_centres

if TYPE_CHECKING:  # pragma: no cover - typing only
    from allen_sr.decoding.uncertainty import Recorder


def dihedral(images: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the 8 flips/rotations of [N, H, W, C] images (k = 0 is the identity)."""
    out = np.rot90(images, k % 4, axes=(1, 2))
    return out[:, :, ::-1] if k >= 4 else out


def undo_dihedral(images: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`dihedral`."""
    out = images[:, :, ::-1] if k >= 4 else images
    return np.rot90(out, -(k % 4), axes=(1, 2))


def dihedral_transforms(rows: int, cols: int) -> tuple[int, ...]:
    """The flips/rotations an output of rows x cols can be averaged over: all 8 when square; the
    4 that keep the shape (identity, half turn and the two mirrors) otherwise."""
    return tuple(range(8)) if rows == cols else (0, 2, 4, 6)


# Input pixels (tiles x rows x cols) one run of 8-fold averaging may stack: one default 384 px tile
# (allen-sr upscale) per run, 256 of the 8x8 dataset tiles x all 8 transforms per run.
TTA_PIXELS_PER_RUN = 160_000


def dihedral_views(run: Callable[[np.ndarray], Sequence[np.ndarray]], x: np.ndarray,
                   tta: bool) -> list[tuple[np.ndarray, ...]]:
    """The outputs of ``run`` (a batch in, a sequence of arrays [N, H', W', C'] out) for each view
    of ``x``, each brought back to ``x``'s orientation: the 8 flips/rotations with ``tta``, else
    ``x`` alone.

    Rotations by 90 degrees transpose a non-square input: they run apart from the others.
    Several transforms share a run (one batch of 8N is faster than 8 runs of N for small tiles),
    as many as fit :data:`TTA_PIXELS_PER_RUN`: a large tile runs one transform at a time, so
    8-fold averaging needs no more memory than a single prediction.
    """
    if not tta:
        return [tuple(run(x))]
    keep = dihedral_transforms(x.shape[1], x.shape[2])
    classes = [keep] + ([tuple(k for k in range(8) if k not in keep)] if len(keep) < 8 else [])
    per_run = max(1, TTA_PIXELS_PER_RUN // max(1, x.shape[0] * x.shape[1] * x.shape[2]))
    undone: dict[int, tuple[np.ndarray, ...]] = {}
    for ks in classes:
        for start in range(0, len(ks), per_run):
            group = ks[start:start + per_run]
            outs = [np.split(a, len(group)) for a in run(np.concatenate([dihedral(x, k) for k in group]))]
            for j, k in enumerate(group):
                undone[k] = tuple(undo_dihedral(out[j], k) for out in outs)
    return [undone[k] for k in range(8)]


def decode_tta(hparams: Any) -> bool:
    """Whether the hparams ask for 8-fold averaging (hparam ``decode_tta``; stock sets lack it)."""
    return bool(getattr(hparams, "decode_tta", False))


def progress_bar(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", mininterval=0.5, smoothing=0.1)


def as_batch(inputs: Any, channels: int) -> np.ndarray:
    arr = np.asarray(inputs)
    if arr.ndim != 4 or arr.shape[-1] != channels:
        raise ValueError(f"inputs must be [N, H, W, {channels}], got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= VOCAB):
        raise ValueError("inputs must hold values in 0..255")
    return arr.astype(np.int64)


def predict_in_chunks(
    inputs: np.ndarray,
    run: Callable[[np.ndarray], np.ndarray],
    factor: int,
    channels: int,
    batch_size: int | None,
    progress: bool,
    desc: str,
    dtype: Any = np.float32,
    out_channels: int | None = None,
) -> np.ndarray:
    """``dtype`` [N, h*factor, w*factor, C]: ``run`` (a one-pass model) on ``batch_size`` tiles at
    a time, with a progress bar; the tiles' layout and values are checked first. One chunk's
    result is returned as ``run`` made it when it has the dtype (no copy of a large tile).
    ``out_channels``: channels of ``run``'s results when not the inputs' C."""
    x = np.asarray(inputs)
    if x.ndim != 4 or x.shape[-1] != channels:
        raise ValueError(f"inputs must be [N, h, w, {channels}], got shape {x.shape}")
    if x.size and (x.min() < 0 or x.max() >= VOCAB):
        raise ValueError("inputs must hold values in 0..255")
    n = x.shape[0]
    step = max(n if not batch_size else int(batch_size), 1)
    if step >= n and not progress:
        return np.asarray(run(x)).astype(dtype, copy=False)
    out = np.zeros((n, x.shape[1] * factor, x.shape[2] * factor, out_channels or channels), dtype)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=desc, unit="tile", mininterval=0.5)
    try:
        for start in range(0, n, step):
            chunk = x[start:start + step]
            out[start:start + len(chunk)] = run(chunk)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return out


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
def single_threaded_blas() -> Iterator[None]:
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


class BatchedDecoder:
    """Batching, progress, per-example sampling streams and 8-fold averaging shared by the
    autoregressive decoders.

    ``tta`` (set from hparam ``decode_tta`` by the decoders): :meth:`decode` decodes each input's
    8 flips/rotations (4 for a non-square output) and returns the mean of the 8 outputs, each
    turned back, rounded. The causal order is not symmetric, so the 8 decodes differ and their
    mean has less of the drift of any one (the self-ensemble of EDSR+, Lim et al. 2017).
    """

    channels: int
    target_shape: tuple[int, int]
    name = "decoder"
    reports_distributions = True  # each sub-pixel's 256-way distribution (decode(..., recorder=...))
    tta = False

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
        recorder: "Recorder | None" = None,
        keys: Sequence[tuple[int, ...]] | None = None,
    ) -> np.ndarray:
        """Decode [N, h, w, C] inputs autoregressively; returns uint8 [N, H, W, C].

        Sub-pixels are filled in the model's causal order (``self.order``: raster order, or
        block-raster order for local 2-D attention). ``max_steps`` stops after that many
        sub-pixels of that order (the rest stay 0), e.g. to compare decoders cheaply. ``batch_size``
        examples are decoded together (default: all). ``seed`` only matters for ``sample``. With
        ``self.tta``, the mean of the decodes of each input's flips/rotations (see the class).
        ``recorder`` (`allen_sr.decoding.uncertainty.Recorder`) receives the distribution each
        value was chosen from; with ``self.tta`` it gets their mixture over the 8 decodes. Mode
        ``mean_bicubic`` conditions every sub-pixel on the rounded bicubic values of the ones
        before it instead of on the values chosen (`allen_sr.decoding.modes`). ``keys``: each
        input's sampling stream (with the seed), e.g. a tile's place in its image; default its index.
        """
        check_mode(mode, temperature)
        inputs = as_batch(inputs, self.channels)
        if keys is not None and len(keys) != inputs.shape[0]:
            raise ValueError(f"{len(keys)} sampling keys for {inputs.shape[0]} inputs")
        if not self.tta:
            return self._decode_all(inputs, mode, temperature, seed, batch_size, max_steps, progress, "",
                                    recorder, keys)
        rows, cols = self.target_shape
        ks = dihedral_transforms(rows, cols)
        n = inputs.shape[0]
        # Example i's transforms side by side (index i * len(ks) + j): its sampling streams depend
        # on i and the transform only, not on how many examples are decoded together.
        stacked = np.stack([dihedral(inputs, k) for k in ks], axis=1).reshape(-1, *inputs.shape[1:])
        inner = None
        if recorder is not None:
            from allen_sr.decoding.uncertainty import Recorder

            targets = None if recorder.targets is None else np.stack(
                [dihedral(recorder.targets, k) for k in ks], axis=1).reshape(-1, *recorder.targets.shape[1:])
            inner = Recorder(recorder.temperatures, targets)
        outs = self._decode_all(stacked, mode, temperature, seed,
                                None if not batch_size else int(batch_size) * len(ks), max_steps,
                                progress, f" ({len(ks)}-fold averaging)", inner,
                                None if keys is None else [(*key, j) for key in keys for j in range(len(ks))])
        if recorder is not None:
            mixture_of_transforms(inner, recorder, n, ks)
        outs = outs.reshape(n, len(ks), rows, cols, self.channels)
        total = sum(undo_dihedral(outs[:, j], k).astype(np.float64) for j, k in enumerate(ks))
        return np.clip(np.rint(total / len(ks)), 0, VOCAB - 1).astype(np.uint8)

    def _decode_all(self, inputs: np.ndarray, mode: str, temperature: float, seed: int | None,
                    batch_size: int | None, max_steps: int | None, progress: bool,
                    note: str, recorder: "Recorder | None" = None,
                    keys: Sequence[tuple[int, ...]] | None = None) -> np.ndarray:
        """:meth:`decode` of checked inputs, each decoded once; ``keys``: their sampling streams
        (default: their indices, so a stream does not depend on the batch size)."""
        rows, cols = self.target_shape
        total = rows * cols * self.channels
        steps = total if max_steps is None else max(0, min(int(max_steps), total))
        n = inputs.shape[0]
        batch_size = n if not batch_size else int(batch_size)
        out = np.zeros((n, rows, cols, self.channels), np.uint8)
        if recorder is not None:
            recorder.start(n, rows, cols, self.channels)
        positions = self.order.positions
        bar = progress_bar(steps * math.ceil(n / max(batch_size, 1)), progress, f"{self.name} {mode}{note}")
        try:
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                streams = range(start, stop) if keys is None else keys[start:stop]
                uniforms = example_uniforms(seed, streams, steps) if mode == "sample" else None
                # mean_bicubic: the chosen values go to `chosen`; the decoder is fed the bicubic
                # context instead (modes.py), so it returns that context, not the output.
                context = chosen = None
                if mode == "mean_bicubic":
                    context = np.rint(bicubic_centres(inputs[start:stop], rows // inputs.shape[1]))
                    context = context.astype(np.int64).reshape(stop - start, -1)
                    chosen = np.zeros_like(context)

                def choose(step: int, logits: np.ndarray, _u: np.ndarray | None = uniforms,
                           _rows: tuple[int, int] = (start, stop), _context: np.ndarray | None = context,
                           _chosen: np.ndarray | None = chosen) -> np.ndarray:
                    position = int(positions[step])
                    if recorder is not None:
                        recorder.observe(_rows[0], _rows[1], position, logits)
                    values = choose_values(logits, mode, temperature, None if _u is None else _u[:, step])
                    if _context is None:
                        return values
                    _chosen[:, position] = values
                    return _context[:, position]

                decoded = self._decode_batch(inputs[start:stop], choose, steps, bar)
                out[start:stop] = decoded if chosen is None else chosen.reshape(decoded.shape)
        finally:
            if bar is not None:
                bar.close()
        return out


def mixture_of_transforms(inner: "Recorder", outer: "Recorder", n: int, ks: tuple[int, ...]) -> None:
    """Fill ``outer`` for ``n`` examples with the equal-weight mixture of the distributions that
    ``inner`` recorded for their ``ks`` flips/rotations (each turned back first): the mixture's
    mean and sd, and its PIT interval (the mean of the transforms' intervals)."""
    t = len(inner.temperatures)
    rows, cols, channels = inner.shape
    outer.start(n, rows, cols, channels)

    def back(name: str) -> np.ndarray:
        values = inner.shaped(name).reshape(t, n, len(ks), rows, cols, channels)
        return np.stack([np.stack([undo_dihedral(values[i, :, j], k) for j, k in enumerate(ks)], axis=1)
                         for i in range(t)])

    means, stds = back("mean").astype(np.float64), back("std").astype(np.float64)
    mean = means.mean(axis=2)
    var = (stds ** 2 + means ** 2).mean(axis=2) - mean ** 2
    outer.mean[:] = mean.reshape(t, n, -1)
    outer.std[:] = np.sqrt(np.maximum(var, 0.0)).reshape(t, n, -1)
    if outer.pit_lo is not None:
        outer.pit_lo[:] = back("pit_lo").mean(axis=2).reshape(t, n, -1)
        outer.pit_hi[:] = back("pit_hi").mean(axis=2).reshape(t, n, -1)
