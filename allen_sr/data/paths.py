"""Local or remote (gs://, ram://) paths: telling them apart and reading small files from either."""
from __future__ import annotations

import json
import os


def is_remote(path: str) -> bool:
    """True for a URL such as gs://bucket/dir or ram://dir (TensorFlow's filesystems)."""
    return "://" in path


def exists(path: str) -> bool:
    """Whether `path` exists, local or remote (remote through tf.io.gfile)."""
    if is_remote(path):
        import tensorflow as tf

        return tf.io.gfile.exists(path)
    return os.path.exists(path)


def read_json(path: str) -> dict:
    """A JSON file, local or remote (remote through tf.io.gfile); OSError when missing."""
    if is_remote(path):
        import tensorflow as tf

        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(path)
        return json.loads(tf.io.gfile.GFile(path, "r").read())
    with open(path) as f:
        return json.load(f)
