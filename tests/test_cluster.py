"""TF_CONFIG -> the t2t-trainer flags of each replica's role (allen_sr.t2t.cluster)."""
import json

import pytest

from allen_sr.t2t import cluster

CLUSTER = {"chief": ["c:1"], "worker": ["w0:1", "w1:1"], "ps": ["p:1"]}


def tf_config(task_type, index=0, cluster=CLUSTER):
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})}


def test_t2t_flags_for_each_role():
    assert cluster.t2t_flags_from_tf_config({}) == []
    assert cluster.t2t_flags_from_tf_config({"TF_CONFIG": '{"cluster": {}}'}) == []
    assert cluster.t2t_flags_from_tf_config(tf_config("chief")) == []
    assert cluster.t2t_flags_from_tf_config(tf_config("ps")) == ["--schedule=run_std_server"]
    assert cluster.t2t_flags_from_tf_config(tf_config("worker", 0)) == ["--schedule=train", "--worker_id=1"]
    assert cluster.t2t_flags_from_tf_config(tf_config("worker", 1)) == ["--schedule=train", "--worker_id=2"]
    task = cluster.parse_tf_config(tf_config("worker", 1))
    assert (task.task_type, task.task_index, task.cluster) == ("worker", 1, CLUSTER)


@pytest.mark.parametrize("env, message", [
    ({"TF_CONFIG": "{not json"}, "TF_CONFIG is not valid JSON"),
    ({"TF_CONFIG": "[]"}, "TF_CONFIG must be a JSON object"),
    (tf_config("trainer"), "\"task.type\" is 'trainer'"),
    (tf_config("worker", 2), "task worker:2 is not in the cluster"),
    (tf_config("worker", -1), "must be a non-negative integer"),
    (tf_config("ps", 0, {"ps": ["p:1"], "gpu": ["g:1"]}), r"unknown job\(s\) \['gpu'\]"),
    (tf_config("worker", 0, {"worker": ["w:1"], "ps": ["p:1"]}), "workers but no chief"),
])
def test_bad_tf_config_is_named(env, message):
    with pytest.raises(ValueError, match=message):
        cluster.parse_tf_config(env)


def test_without_tf_config_train_argv_is_untouched():
    """No TF_CONFIG: allen-sr train's argv, gs:// paths included, passes through unchanged."""
    argv = ["--data_dir=gs://bucket/data", "--output_dir", "gs://bucket/train", "--problem=p"]
    assert cluster.prepare_cluster_task(argv, {}) == argv
    assert cluster.prepare_cluster_task(argv + ["--help"], tf_config("ps")) == argv + ["--help"]
