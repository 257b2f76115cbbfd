"""The CUDA path's collectives, checked without a GPU: the process group maps CPU tensors to gloo and CUDA tensors
to NCCL, and every collective raytrain's own loop issues (step counts, metric histograms, sums) uses CPU tensors,
so it runs on a group whose only CPU backend is gloo."""

from __future__ import annotations

import numpy as np
from helpers import run_distributed

from raytrain.spec import parse_spec
from raytrain.train.runner import make_trainer, process_group_backend


def test_cuda_runs_get_a_device_keyed_backend():
    assert process_group_backend("cuda") == "cpu:gloo,cuda:nccl"
    assert process_group_backend("cpu") == "gloo"


def test_the_trainer_of_a_cuda_spec_asks_for_the_device_keyed_backend(tmp_path):
    from raytrain.data import PreparedData
    from raytrain.data.schema import FeatureSchema, SparseFeature

    spec = parse_spec({"name": "c", "data": {"source": "synthetic"},
                       "train": {"device": "cuda", "resources_per_worker": {"gpu": 1}}})
    prepared = PreparedData(FeatureSchema((SparseFeature("s0", 10, False, "context"),), (), "label"), synthetic={})
    trainer = make_trainer(spec, prepared, tmp_path)
    assert trainer.backend_config.backend == "cpu:gloo,cuda:nccl"
    assert trainer.scaling_config.use_gpu


def _collectives(rank, world):
    import torch.distributed as dist

    from raytrain.train.loaders import _agree
    from raytrain.train.metrics import BinaryAccumulator

    assert dist.get_backend() == "cpu:gloo"  # a CUDA tensor would find no backend on this group
    steps = _agree(10 + rank, dist.ReduceOp.MIN)
    acc = BinaryAccumulator()
    acc.add(np.array([rank % 2, 1.0], np.float32), np.array([0.2, 0.9], np.float32))
    acc.merge_across_ranks()
    return steps, acc.rows


def test_the_loops_collectives_run_on_the_cpu_backend_of_a_mixed_group():
    out = run_distributed(_collectives, 2, backend="cpu:gloo")
    assert out == [(10, 4), (10, 4)]
