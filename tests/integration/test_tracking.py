"""Experiment tracking against a real MLflow tracking server on 127.0.0.1 (started by the test), and TensorBoard
event files: a train run and a tune run with their parameters, metric histories and artifacts."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from raytrain.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    pytest.importorskip("mlflow")
    base = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}",
                             "--default-artifact-root", (base / "artifacts").as_uri(), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the MLflow server did not come up in 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def _scalars(path: Path) -> list[tuple[int, str, float]]:
    """(step, tag, value) of a TensorBoard event file, read as the TFRecord file it is (length, CRC, event, CRC)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    data, out, at = path.read_bytes(), [], 0
    while at < len(data):
        (n,) = struct.unpack("<Q", data[at:at + 8])
        event = Event.FromString(data[at + 12:at + 12 + n])
        at += 12 + n + 4
        out += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    return out


def test_train_and_tune_runs_are_tracked_with_params_metrics_and_artifacts(ray_local, mlflow_server, tmp_path,
                                                                           record_property):
    from mlflow.tracking import MlflowClient

    from raytrain.cli.main import run_spec

    track = [f"tracking={{mlflow: true, tracking_uri: '{mlflow_server}', experiment: rt-test, tensorboard: true}}"]
    spec = load_spec(ROOT / "jobs/train_ml100k.yaml", [f"storage={tmp_path}", "train.epochs=2",
                                                        "train.batch_size=2048", *track])
    run_spec(spec, None)
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("rt-test")
    (run,) = client.search_runs([exp.experiment_id], "tags.`raytrain.kind` = 'train'")
    assert run.data.params["model.arch"] == "dcn_v2" and run.data.params["train.epochs"] == "2"
    history = client.get_metric_history(run.info.run_id, "val_auc")
    assert [m.step for m in history] == [1, 2] and all(0.7 < m.value < 1 for m in history)
    assert 0.7 < run.data.metrics["test_auc"] < 1 and run.data.metrics["test_epoch"] in (1, 2)
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"spec.yaml", "plan.txt", "result.json", "metrics.parquet", "tensorboard"} <= names, names
    run_dir = Path(run.data.tags["raytrain.run_dir"])
    # TensorBoard's scalars were written as each epoch ended, not after the run: one event file per epoch, the
    # first closed before the second epoch's metrics existed
    events = sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"), key=lambda f: f.name.rsplit(".", 1)[-1])
    assert len(events) == 2, events
    assert events[0].stat().st_mtime <= (run_dir / "metrics" / "epoch_0002.json").stat().st_mtime
    assert [step for f in events for step, tag, _ in _scalars(f) if tag == "val_auc"] == [1, 2]

    spec = load_spec(ROOT / "jobs/tune_ml100k_asha.yaml", [
        f"storage={tmp_path}", "train.workers=1", "train.batch_size=2048", "train.epochs=1", "tune.num_samples=2",
        "tune.max_concurrent_trials=2", "tune.scheduler={name: fifo}", "tune.search={algorithm: random, seed: 0}",
        "tune.space={model.embedding_dim: 'choice([8, 16])'}", *track])
    run_spec(spec, None)
    trials = client.search_runs([exp.experiment_id], "tags.`raytrain.kind` = 'tune-trial'")
    assert len(trials) == 2 and all("val_auc" in t.data.metrics for t in trials)
    assert all(t.data.params.get("model.embedding_dim") in ("8", "16") for t in trials)
    (tune_run,) = client.search_runs([exp.experiment_id], "tags.`raytrain.kind` = 'tune'")
    record_property("best_val_auc", float(tune_run.data.metrics["best_val_auc"]))
    # floor: one run reached 0.765; 0.025 below for noise
    assert tune_run.data.metrics["trials"] == 2 and 0.74 < tune_run.data.metrics["best_val_auc"] < 1
    assert {"leaderboard.parquet", "best_spec.yaml", "metric_per_epoch.png"} <= \
        {a.path for a in client.list_artifacts(tune_run.info.run_id)}
    # `raytrain resume` of the finished tune run reruns nothing, and is tracked like the run it resumes
    from raytrain.cli.main import main

    tune_dir = Path(tune_run.data.tags["raytrain.run_dir"])
    assert main(["resume", str(tune_dir)]) == 0
    tune_runs = client.search_runs([exp.experiment_id], "tags.`raytrain.kind` = 'tune'")
    assert len(tune_runs) == 2 and {r.data.tags["raytrain.run_dir"] for r in tune_runs} == {str(tune_dir)}


def test_a_tracking_server_that_is_down_costs_a_warning_not_the_run(tmp_path, capsys):
    from raytrain.tracking import record

    spec = load_spec(ROOT / "jobs/train_ml100k.yaml",
                     [f"storage={tmp_path}", "tracking={mlflow: true, tracking_uri: 'http://127.0.0.1:9'}"])
    (tmp_path / "run").mkdir()
    import os

    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    assert record(spec, {"run_dir": str(tmp_path / "run"), "test_auc": 0.8}) is None
    assert "warning: MLflow tracking at http://127.0.0.1:9 failed" in capsys.readouterr().out
