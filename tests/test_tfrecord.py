"""The hand-written TFRecord wire format is what TensorFlow reads (TensorFlow only checks it)."""
import os

import numpy as np
import pytest

from allen_sr.data import tfrecord


def test_hand_encoded_example_parses_as_tf_example():
    import tensorflow as tf

    tile = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ex = tf.train.Example.FromString(tfrecord.tile_example(tile, "slide_ü", 2**40, 300))
    f = ex.features.feature
    assert f["image/encoded"].bytes_list.value == [tile.tobytes()]
    assert f["image/format"].bytes_list.value == [b"raw"]
    keys = ("image/height", "image/width", "image/channels", "image/top", "image/left")
    assert [f[k].int64_list.value[0] for k in keys] == [64, 64, 3, 2**40, 300]
    assert f["image/source"].bytes_list.value[0].decode() == "slide_ü"
    assert len(f) == 8


def test_hand_framed_records_are_tfrecords_with_checked_crcs(tmp_path):
    """Our TFRecord framing (length, masked CRC32C, data, masked CRC32C) is what TF reads, and
    TF verifies the CRCs: a flipped byte is reported as data loss, not read back."""
    import tensorflow as tf

    payloads = [b"", b"x", os.urandom(300), os.urandom(70_000)]
    path = tmp_path / "framed.tfrecord"
    path.write_bytes(b"".join(tfrecord.tfrecord_frame(p) for p in payloads))
    assert list(tf.compat.v1.io.tf_record_iterator(str(path))) == payloads
    frames = tfrecord.split_frames(path.read_bytes(), len(payloads))
    assert [bytes(f[12:-4]) for f in frames] == payloads

    corrupt = bytearray(path.read_bytes())
    corrupt[len(tfrecord.tfrecord_frame(payloads[0])) + 12] ^= 1  # first data byte of record 2
    path.write_bytes(bytes(corrupt))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    with pytest.raises(ValueError, match="truncated record"):
        tfrecord.split_frames(bytes(corrupt[:-5]), len(payloads))
