"""Run storage helpers on the local filesystem (the S3 path runs in tests/integration/test_storage_uri.py)."""

from __future__ import annotations

import pytest

from raytrain.errors import SpecError
from raytrain.spec import load_spec
from raytrain.storage import Mirror, Store, is_uri, join, materialize, redact

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_uri_helpers():
    assert is_uri("s3://b/p") and is_uri("gs://b") and not is_uri("/tmp/x") and not is_uri("file:///tmp/x")
    assert join("s3://b/runs/?endpoint_override=h:1&scheme=http", "name", "stamp") == \
        "s3://b/runs/name/stamp?endpoint_override=h:1&scheme=http"
    assert join("/tmp/runs", "a") == "/tmp/runs/a"
    assert redact("s3://AKIA:s3cr3t@b/p?session_token=abc&scheme=http") == "s3://***@b/p?session_token=***&scheme=http"


def test_store_on_a_path(tmp_path):
    s = Store(tmp_path / "run")
    assert not s.remote and not s.exists()
    s.write_text("metrics/epoch_0001.json", "{}")
    s.append_text("resumes.jsonl", "a\n")
    s.append_text("resumes.jsonl", "b\n")
    assert s.read_text("resumes.jsonl") == "a\nb\n" and s.files() == ["metrics/epoch_0001.json", "resumes.jsonl"]
    copy = Store(tmp_path / "copy")
    copy.upload(tmp_path / "run", skip=lambda rel: rel.startswith("metrics/"))
    assert copy.files() == ["resumes.jsonl"]
    assert materialize(str(tmp_path / "run")) == tmp_path / "run"
    # what Ray reports (a path inside the store's filesystem) back to a location; the sub-directories
    assert s.location_of(s.path("ray/epoch_0001")) == join(str(tmp_path / "run"), "ray/epoch_0001")
    with pytest.raises(ValueError, match="not inside"):
        s.location_of("/elsewhere/ray")
    s.write_text("tune/b/x", "1")
    s.write_text("tune/a/x", "1")
    assert s.dirs("tune") == ["a", "b"] and s.dirs("nothing") == []


def test_mirror_writes_both_sides_and_publishes_all_but_skipped(tmp_path):
    (tmp_path / "local" / "data").mkdir(parents=True)
    local = Mirror(tmp_path / "local", str(tmp_path / "local"))
    assert local.store is None  # a path run: the local directory is the run
    local.put("spec.yaml", "a: 1")
    local.publish(skip_dirs=("data/",))  # nothing to do
    assert (tmp_path / "local" / "spec.yaml").read_text() == "a: 1"
    # a "remote" run here is a store on another path: what publish would upload to a bucket
    m = Mirror(tmp_path / "local", str(tmp_path / "local"))
    m.store = Store(tmp_path / "remote")
    m.put("schema.json", "{}")
    (tmp_path / "local" / "data" / "train.parquet").write_text("x")
    (tmp_path / "local" / "result.json").write_text("{}")
    m.publish(skip_dirs=("data/",))
    assert m.store.files() == ["result.json", "schema.json", "spec.yaml"]
    # share: files inside the run go to the store too (what workers on other nodes read); the user's stay put
    from raytrain.data import PreparedData
    from raytrain.data.schema import FeatureSchema

    outside = tmp_path / "user.parquet"
    outside.write_text("y")
    m.location = str(tmp_path / "remote")
    prepared = PreparedData(FeatureSchema((), ("x",), "y"), {"train": [str(tmp_path / "local/data/train.parquet")],
                                                             "test": [str(outside)]})
    shared = m.share(prepared)
    assert shared.paths == prepared.paths  # the driver still reads its local files
    assert shared.shared == {"train": [str(tmp_path / "remote/data/train.parquet")], "test": [str(outside)]}
    assert (tmp_path / "remote/data/train.parquet").read_text() == "x"
    assert PreparedData.from_dict(shared.to_dict()).shared == shared.shared
    assert local.share(prepared) is prepared  # a path run: nothing to copy


def test_uri_storage_is_for_train_tune_and_distill_runs():
    with pytest.raises(SpecError) as e:
        load_spec(ROOT / "jobs/bandit_obd_bts.yaml", ["storage=s3://bucket/runs?endpoint_override=h:1&secret_key=x"])
    msg = str(e.value)
    assert "is run storage for kinds train, tune and distill" in msg and "s3://bucket/runs?endpoint_override=h:1" in msg
    assert "secret_key" not in msg  # the credential was taken out of the URI when the spec was read
    for job in ("train_ml100k.yaml", "tune_ml100k_asha.yaml", "distill_ml100k.yaml"):
        assert load_spec(ROOT / "jobs" / job, ["storage=s3://bucket/runs"]).storage == "s3://bucket/runs"
    with pytest.raises(ValueError, match="not a usable pyarrow.fs URI"):
        Store("nosuchscheme://x/y")


def test_credentials_leave_the_uri_for_the_environment_and_come_back_when_opening(monkeypatch):
    import os
    import pickle
    import subprocess
    import sys

    from raytrain.storage import CREDENTIALS_ENV, adopt, filesystem, has_credentials

    monkeypatch.delenv(CREDENTIALS_ENV, raising=False)
    uri = "s3://KEYID9:S3CRETVALUE@bkt/runs/x?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1"
    clean = adopt(uri)
    assert clean == "s3://bkt/runs/x?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1"
    assert has_credentials(uri) and not has_credentials(clean) and adopt(clean) == clean
    assert adopt("/local/path") == "/local/path" and adopt("s3://plain/p") == "s3://plain/p"
    assert "S3CRETVALUE" in os.environ[CREDENTIALS_ENV]
    # secret-like query values go the same way; other options stay in the URI
    assert adopt("gs://b2/p?access_token=T0K&x=1") == "gs://b2/p?x=1"
    # the filesystem for the clean URI carries the credentials, but pickles (what Ray ships and Tune saves) do not
    fs, path = filesystem(clean)
    assert path == "bkt/runs/x" and fs.type_name == "py::raytrain+s3"
    blob = pickle.dumps(fs)
    assert b"S3CRETVALUE" not in blob and b"KEYID9" not in blob
    # another process resolves them from its environment, and refuses with a clear message without it
    code = ("import pickle, sys; fs = pickle.loads(sys.stdin.buffer.read()); print(fs.type_name); "
            "print(fs.handler.fs.type_name)")
    env = dict(os.environ)
    ok = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, env=env)
    assert ok.returncode == 0 and ok.stdout.decode().split() == ["py::raytrain+s3", "s3"], ok.stderr
    env.pop(CREDENTIALS_ENV)
    bad = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, env=env)
    assert bad.returncode != 0 and b"this process has none (RAYTRAIN_STORAGE_CREDENTIALS is not set here)" in bad.stderr
    assert b"S3CRETVALUE" not in bad.stderr


def test_a_node_reads_its_credentials_from_the_file_its_environment_names(monkeypatch, tmp_path):
    """RAYTRAIN_STORAGE_CREDENTIALS_FILE: a cluster node's own credentials (a mounted secret); the variable wins for
    the same bucket; an unreadable or malformed file is named."""
    import json

    from raytrain.credentials import CREDENTIALS_ENV, CREDENTIALS_FILE_ENV, with_credentials

    monkeypatch.delenv(CREDENTIALS_ENV, raising=False)
    secret = tmp_path / "creds.json"
    secret.write_text(json.dumps({"s3://a": {"userinfo": "FILEKEY:FILESECRET", "query": {}},
                                  "gs://b": {"userinfo": "", "query": {"access_token": "T"}}}))
    monkeypatch.setenv(CREDENTIALS_FILE_ENV, str(secret))
    assert with_credentials("s3://a/runs?region=x") == "s3://FILEKEY:FILESECRET@a/runs?region=x"
    assert with_credentials("gs://b/p") == "gs://b/p?access_token=T"
    assert with_credentials("s3://other/p") == "s3://other/p"
    monkeypatch.setenv(CREDENTIALS_ENV, json.dumps({"s3://a": {"userinfo": "ENVKEY:ENVSECRET", "query": {}}}))
    assert with_credentials("s3://a/runs") == "s3://ENVKEY:ENVSECRET@a/runs"
    assert with_credentials("gs://b/p") == "gs://b/p?access_token=T"  # the file's other entries still count
    secret.write_text("{not json")
    with pytest.raises(ValueError, match=rf"{CREDENTIALS_FILE_ENV}: {secret} is not JSON"):
        with_credentials("s3://a/runs")
    monkeypatch.setenv(CREDENTIALS_FILE_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(PermissionError, match=rf"{CREDENTIALS_FILE_ENV}: cannot read .*missing.json"):
        with_credentials("s3://a/runs")


def test_the_cli_hides_credentials_in_its_arguments_from_its_command_line():
    """ps (and Ray's job table, which records a driver's command line) show the arguments redacted."""
    import subprocess
    import sys

    code = ("import sys, time; from raytrain.cli.main import _hide_credentials; "
            "_hide_credentials(sys.argv[1:]); print('ready', flush=True); time.sleep(30)")
    proc = subprocess.Popen([sys.executable, "-c", code, "run", "x.yaml", "storage=s3://KEYID9:S3CRETVALUE@bkt/runs"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            shown = f.read().replace(b"\0", b" ").decode()
        assert "S3CRETVALUE" not in shown and "KEYID9" not in shown
        assert shown.startswith("raytrain run x.yaml storage=s3://***@bkt/runs"), shown
    finally:
        proc.kill()
        proc.wait(timeout=10)
