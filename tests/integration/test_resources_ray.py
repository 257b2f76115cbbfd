"""A run attached to a cluster that lacks what its workers need waits, saying so once, then gives up (exit 3)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from raytrain.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]


def test_a_cluster_without_the_gpus_a_run_needs_is_waited_for_then_given_up(ray_local, caplog):
    import logging

    import ray

    from raytrain.train.resources import ResourceError, wait_for_cluster

    assert ray.cluster_resources().get("GPU", 0) == 0
    spec = load_spec(ROOT / "jobs/train_ml100k.yaml", ["train.device=cuda", "train.start_timeout_s=1.5"])
    caplog.set_level(logging.INFO)
    t0 = time.monotonic()
    with pytest.raises(ResourceError, match=r"train.device cuda: 2 workers need 2 GPUs, the cluster has 0, after "
                                            r"waiting 1.5 s \(train.start_timeout_s\)") as e:
        wait_for_cluster(spec, poll_s=0.2)
    assert 1.5 <= time.monotonic() - t0 < 5 and e.value.exit_code == 3
    said = [r.getMessage() for r in caplog.records if "waiting for the cluster" in r.getMessage()]
    assert len(said) == 1 and "2 GPUs" in said[0]  # one line, not one per poll
    # what the cluster has: no wait at all
    t0 = time.monotonic()
    wait_for_cluster(load_spec(ROOT / "jobs/train_ml100k.yaml", ["train.start_timeout_s=30"]))
    assert time.monotonic() - t0 < 1
