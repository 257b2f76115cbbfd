"""Run storage helpers on the local filesystem (the S3 path runs in tests/integration/test_storage_uri.py)."""

from __future__ import annotations

import pytest

from raytrain.errors import SpecError
from raytrain.spec import load_spec
from raytrain.storage import Store, is_uri, join, materialize, redact

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


def test_uri_storage_is_for_train_runs():
    with pytest.raises(SpecError) as e:
        load_spec(ROOT / "jobs/tune_ml100k_asha.yaml", ["storage=s3://bucket/runs?endpoint_override=h:1&secret_key=x"])
    msg = str(e.value)
    assert "is run storage for kind train" in msg and "secret_key=***" in msg and "secret_key=x" not in msg
    spec = load_spec(ROOT / "jobs/train_ml100k.yaml", ["storage=s3://bucket/runs"])
    assert spec.storage == "s3://bucket/runs"
    with pytest.raises(ValueError, match="not a usable pyarrow.fs URI"):
        Store("nosuchscheme://x/y")
