"""What every decoder shares: the :class:`Decoder` protocol, batching with progress and
per-example sampling streams (:class:`BatchedDecoder`), input checks and BLAS threading."""
from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from allen_sr.decoding.modes import VOCAB, check_mode, choose_values, example_uniforms


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
) -> np.ndarray:
    """float32 [N, h*factor, w*factor, C]: ``run`` (a one-pass model) on ``batch_size`` tiles at a
    time, with a progress bar; the tiles' layout and values are checked first."""
    x = np.asarray(inputs)
    if x.ndim != 4 or x.shape[-1] != channels:
        raise ValueError(f"inputs must be [N, h, w, {channels}], got shape {x.shape}")
    if x.size and (x.min() < 0 or x.max() >= VOCAB):
        raise ValueError("inputs must hold values in 0..255")
    n = x.shape[0]
    step = max(n if not batch_size else int(batch_size), 1)
    out = np.zeros((n, x.shape[1] * factor, x.shape[2] * factor, channels), np.float32)
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

        Sub-pixels are filled in the model's causal order (``self.order``: raster order, or
        block-raster order for local 2-D attention). ``max_steps`` stops after that many
        sub-pixels of that order (the rest stay 0), e.g. to compare decoders cheaply. ``batch_size``
        examples are decoded together (default: all). ``seed`` only matters for ``sample``.
        """
        check_mode(mode, temperature)
        inputs = as_batch(inputs, self.channels)
        rows, cols = self.target_shape
        total = rows * cols * self.channels
        steps = total if max_steps is None else max(0, min(int(max_steps), total))
        n = inputs.shape[0]
        batch_size = n if not batch_size else int(batch_size)
        out = np.zeros((n, rows, cols, self.channels), np.uint8)
        bar = progress_bar(steps * math.ceil(n / max(batch_size, 1)), progress, f"{self.name} {mode}")
        try:
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                uniforms = (
                    example_uniforms(seed, range(start, stop), steps) if mode == "sample" else None
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
