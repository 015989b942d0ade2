"""Reading a split's examples through the problem's own tensor2tensor input pipeline."""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from allen_sr.t2t.names import register_all
from allen_sr.errors import InvalidInputError, MissingInputError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tensor2tensor.utils.hparam import HParams


# The splits `allen-sr datagen` writes (each problem's generate_data: train and dev); t2t's TEST split has
# no files in any dataset it makes, so it is not offered.
SPLITS = {"dev": "eval", "eval": "eval", "train": "train"}


def drain(dataset: Any, pattern: str | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(inputs, targets) of every example of a graph-mode ``dataset``, in order; call it inside
    the graph the dataset was built in. A damaged record file (truncated, corrupted) is an
    InvalidInputError naming it, looked for among the files of ``pattern`` (its records' glob)."""
    import tensorflow as tf

    features = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
    inputs, targets = [], []
    with tf.compat.v1.Session() as session:
        while True:
            try:
                example = session.run({"inputs": features["inputs"], "targets": features["targets"]})
            except tf.errors.OutOfRangeError:
                return inputs, targets
            except tf.errors.DataLossError as exc:
                raise damaged_records(pattern, exc) from None
            inputs.append(example["inputs"])
            targets.append(example["targets"])


def damaged_records(pattern: str | None, error: Any) -> InvalidInputError:
    """The error to raise for tf.errors.DataLossError ``error`` while reading the records of the glob
    ``pattern``: it names the first file of them that does not read to its end, and what to do."""
    import tensorflow as tf

    found, reason = pattern or "a record file", error.message
    for path in sorted(tf.io.gfile.glob(pattern)) if pattern else []:
        with tf.Graph().as_default():
            record = tf.compat.v1.data.make_one_shot_iterator(tf.data.TFRecordDataset(path)).get_next()
            with tf.compat.v1.Session() as session:
                try:
                    while True:
                        session.run(record)
                except tf.errors.OutOfRangeError:
                    continue
                except tf.errors.DataLossError as exc:
                    found, reason = path, exc.message
                    break
    what = re.search(r"(truncated|corrupted) record at \d+", reason)
    reason = what.group(0) if what else reason.strip().split("\n")[0]
    return InvalidInputError(f"{found} is damaged ({reason}): run `allen-sr datagen` again with --data_dir "
                             f"{os.path.dirname(found) or '.'} (it rebuilds a dataset whose files differ from "
                             "what it wrote)")


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
    register_all()
    import tensorflow as tf
    from tensor2tensor.data_generators import problem as problem_lib
    from tensor2tensor.utils import hparams_lib, registry

    if split not in SPLITS:
        raise InvalidInputError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    if isinstance(problem, str):
        problem = registry.problem(problem)
    dataset_split = {"eval": problem_lib.DatasetSplit.EVAL, "train": problem_lib.DatasetSplit.TRAIN}[SPLITS[split]]
    pattern = problem.filepattern(os.fspath(data_dir), dataset_split)
    if not tf.io.gfile.glob(pattern):
        raise MissingInputError(f"no {split} examples of {problem.name} in --data_dir {data_dir} (no files "
                                f"{os.path.basename(pattern)}): pass the --data_dir the run trained on, or run "
                                f"`allen-sr datagen --problem={problem.name} --data_dir {data_dir}` first")
    hparams = hparams_lib.copy_hparams(hparams)
    with tf.Graph().as_default():
        # A graph seed makes any random op in a problem's eval preprocessing repeatable.
        tf.compat.v1.set_random_seed(0)
        dataset = problem.dataset(
            tf.estimator.ModeKeys.EVAL, data_dir=os.fspath(data_dir), hparams=hparams,
            shuffle_files=False, dataset_split=dataset_split, num_threads=1,
        ).take(num_examples)
        inputs, targets = drain(dataset, pattern)
    if not inputs:
        raise InvalidInputError(f"no {split} examples of {problem.name} in {data_dir}")
    x, y = np.stack(inputs), np.stack(targets)
    for name, arr in (("inputs", x), ("targets", y)):
        if arr.min() < 0 or arr.max() > 255:
            raise InvalidInputError(f"{name} of {problem.name} hold values outside 0..255")
    return x.astype(np.uint8), y.astype(np.uint8)
