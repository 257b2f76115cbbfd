"""What the driver does before Ray Train's workers start is start-up time of every run and tune trial (issue 17):
building a trainer must not load TorchRec or FBGEMM on the driver (only the workers train), and a local Ray that
raytrain starts runs Ray Train with a short health-check interval and without the preemption watcher."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_building_the_trainers_leaves_torchrec_and_fbgemm_unloaded_on_the_driver(tmp_path):
    out = _run(f"""
        import sys
        from raytrain.data import PreparedData
        from raytrain.data.schema import FeatureSchema, SparseFeature
        from raytrain.spec import parse_spec
        from raytrain.train.runner import make_trainer
        from raytrain.train.sequential.run import sequential_trainer

        spec = parse_spec({{"name": "s", "data": {{"source": "synthetic"}}}})
        prepared = PreparedData(FeatureSchema((SparseFeature("s0", 10, False, "context"),), (), "label"), synthetic={{}})
        trainer = make_trainer(spec, prepared, {str(tmp_path)!r})
        seq = sequential_trainer(parse_spec({{"name": "q", "data": {{"source": "movielens-100k"}},
                                              "model": {{"arch": "hstu"}}}}), {str(tmp_path)!r}, "unused")
        assert "torch" in sys.modules  # Ray Train's TorchTrainer itself needs torch: the check below can fail
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torchrec", "fbgemm_gpu")))
        print(trainer.train_loop_per_worker.__module__, seq.train_loop_per_worker.__module__)
    """)
    loaded, modules = out.strip().splitlines()
    assert loaded == "[]"
    assert modules == "raytrain.train.runner raytrain.train.sequential.run"


def test_an_embedded_ray_gets_ray_trains_local_settings_and_a_users_value_wins():
    out = _run("""
        import os, ray
        os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "1.5"  # the user's own value
        from raytrain.spec import parse_spec
        from raytrain.train.runner import init_ray
        init_ray(parse_spec({"name": "e", "data": {"source": "synthetic"}, "ray": {"num_cpus": 1}}))
        env = ray.get(ray.remote(num_cpus=0)(lambda: dict(os.environ)).remote())
        ray.shutdown()
        for key in ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER",
                    "RAY_enable_metrics_collection"):
            print(key, os.environ.get(key), env.get(key))
    """)
    lines = dict((line.split(" ", 1)) for line in out.strip().splitlines()[-3:])
    assert lines["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "1.5 1.5"
    assert lines["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0 0"
    assert lines["RAY_enable_metrics_collection"] == "0 0"  # the workers collect no metrics (nothing reads them)


def test_the_lean_trainer_runs_only_on_raytrains_local_ray_and_keeps_the_dataset_manager_when_given_datasets():
    # which of Ray Train's helpers a run starts (the run itself: tests/integration/test_train_ray.py)
    out = _run("""
        import os
        import ray
        from ray.train import ScalingConfig
        from raytrain.train.lean import trainer_class
        datasets = {"train": lambda: None}  # a Dataset factory, called only when a run starts (no Ray needed here)
        for value in (None, "0", "1"):
            os.environ.pop("RAYTRAIN_LOCAL_RAY", None)
            if value:
                os.environ["RAYTRAIN_LOCAL_RAY"] = value
            cls = trainer_class()
            for ds in (None, datasets):
                trainer = cls(lambda config: None, scaling_config=ScalingConfig(num_workers=2), datasets=ds)
                names = {type(cb).__name__ for cb in trainer._create_default_callbacks()}
                helpers = sorted(names & {"DatasetsCallback", "PlacementGroupCleanerCallback"})
                print(value, cls.__name__, ds is not None, ",".join(helpers))
        print("ray started:", ray.is_initialized())
    """)
    assert out.strip().splitlines()[-7:] == [
        "None TorchTrainer False DatasetsCallback,PlacementGroupCleanerCallback",
        "None TorchTrainer True DatasetsCallback,PlacementGroupCleanerCallback",
        "0 TorchTrainer False DatasetsCallback,PlacementGroupCleanerCallback",
        "0 TorchTrainer True DatasetsCallback,PlacementGroupCleanerCallback",
        "1 LocalTorchTrainer False ",
        "1 LocalTorchTrainer True DatasetsCallback",
        "ray started: False",
    ]
