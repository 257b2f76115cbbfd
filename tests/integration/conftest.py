from pathlib import Path

import pytest

from raytrain.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def pipeline_out(ray_local, tmp_path_factory):
    """One small pipeline run; its ensemble and student are also what tests/integration/test_serve_ray.py serves."""
    from raytrain.kinds.pipeline import run_pipeline

    spec = load_spec(ROOT / "jobs/pipeline_ml100k.yaml", [
        f"storage={tmp_path_factory.mktemp('pipeline')}", "train.workers=1", "train.batch_size=2048", "train.epochs=1",
        "tune.num_samples=2",
        "tune.max_concurrent_trials=2", "tune.scheduler={name: fifo}", "tune.search={algorithm: random, seed: 0}",
        "tune.space={model.embedding_dim: 'choice([8, 16, 32])'}", "ensemble.top_k=2", "distill.alpha=0.5",
        "distill.student={model.embedding_dim: 8, model.over_arch: [32], data.label.ordinal: [], train.epochs: 1}"])
    return run_pipeline(spec)


@pytest.fixture(scope="session")
def two_tower_summary(ray_local, tmp_path_factory):
    """One small two-tower run (its summary): its retrieval metrics are tested in test_train_ray.py, and
    test_serve_scale_ray.py serves it."""
    from raytrain.train.runner import run_train

    spec = load_spec(ROOT / "jobs/train_ml100k_two_tower.yaml", [f"storage={tmp_path_factory.mktemp('two-tower')}",
                                                                  "train.epochs=1"])
    return run_train(spec)
