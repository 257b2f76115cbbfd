"""Cluster configs, KubeRay manifests, and the submit client's request, errors and token handling (no cluster)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from kuberay_schema import BY_KIND

from raytrain.cli.main import main, split_overrides
from raytrain.errors import SubmissionError
from raytrain.spec import load_spec, parse_spec
from raytrain.submit.jobs import build_request, resolve_address
from raytrain.submit.kuberay import rayjob, render_rayjob

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = sorted((ROOT / "cluster").rglob("*.yaml"))


def test_cluster_dir_holds_configs():
    names = {p.relative_to(ROOT / "cluster").as_posix() for p in CLUSTER_YAML}
    assert {"kuberay/raycluster-gpu.yaml", "kuberay/rayjob-train-synthetic.yaml", "launcher/aws-gpu.yaml"} <= names


@pytest.mark.parametrize("path", CLUSTER_YAML, ids=lambda p: p.name)
def test_every_cluster_yaml_parses_and_kuberay_ones_match_the_crd(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs
    for doc in docs:
        if doc.get("apiVersion") == "ray.io/v1":
            jsonschema.validate(doc, BY_KIND[doc["kind"]])


def test_schema_catches_typical_mistakes():
    good = yaml.safe_load((ROOT / "cluster/kuberay/raycluster-gpu.yaml").read_text())
    jsonschema.validate(good, BY_KIND["RayCluster"])
    bad = copy.deepcopy(good)
    bad["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'string'"):
        jsonschema.validate(bad, BY_KIND["RayCluster"])
    bad = copy.deepcopy(good)
    bad["spec"]["workerGroupSpec"] = bad["spec"].pop("workerGroupSpecs")  # misspelt
    with pytest.raises(jsonschema.ValidationError, match="'workerGroupSpec' was unexpected"):
        jsonschema.validate(bad, BY_KIND["RayCluster"])


def test_export_kuberay_renders_a_valid_rayjob_that_carries_the_spec(tmp_path):
    spec = load_spec(ROOT / "jobs/train_synthetic.yaml", ["train.device=cuda", "train.resources_per_worker.gpu=1",
                                                          "train.workers=4"])
    doc = rayjob(spec)
    jsonschema.validate(doc, BY_KIND["RayJob"])
    workers = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == 4 and workers["template"]["spec"]["containers"][0]["resources"]["limits"][
        "nvidia.com/gpu"] == 1
    env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])["env_vars"]
    carried = parse_spec(yaml.safe_load(env["RAYTRAIN_SPEC"]))
    assert carried.storage == "/mnt/raytrain/runs" and carried.train.workers == 4 and carried.name == spec.name
    for c in (doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
              + doc["spec"]["submitterPodTemplate"]["spec"]["containers"]):
        assert {"name": "RAY_AUTH_MODE", "value": "token"} in c["env"]
    # the committed example is exactly what the command renders today
    out = tmp_path / "job.yaml"
    assert main(["export", "kuberay", str(ROOT / "jobs/train_synthetic.yaml"), "train.device=cuda",
                 "train.resources_per_worker.gpu=1", "train.workers=4", "-o", str(out)]) == 0
    assert out.read_text() == (ROOT / "cluster/kuberay/rayjob-train-synthetic.yaml").read_text() == render_rayjob(spec)


def test_request_is_self_contained_and_the_dry_run_never_shows_the_token(capsys, tmp_path):
    spec = load_spec(ROOT / "jobs/train_ml100k.yaml", [f"storage={tmp_path}"])
    request = build_request(spec, "job-1")
    assert request["entrypoint"] == "python -m raytrain.submit.entry" and request["submission_id"] == "job-1"
    assert parse_spec(yaml.safe_load(request["runtime_env"]["env_vars"]["RAYTRAIN_SPEC"])) == spec
    token = "tok3n==with=equals"
    (tmp_path / "token").write_text(token + "\n")
    rc = main(["submit", str(ROOT / "jobs/train_ml100k.yaml"), "--dry-run", "--address", "http://10.0.0.1:8265",
               "--token-file", str(tmp_path / "token"), "train.epochs=2", "storage=runs"])
    out = capsys.readouterr()
    assert rc == 0 and token not in out.out + out.err
    head, body = out.out.split("\n\n", 1)
    assert head.splitlines() == ["POST http://10.0.0.1:8265/api/jobs/", "Content-Type: application/json",
                                 "Authorization: Bearer ***"]
    sent = parse_spec(yaml.safe_load(json.loads(body)["runtime_env"]["env_vars"]["RAYTRAIN_SPEC"]))
    assert sent.train.epochs == 2 and Path(sent.storage).is_absolute()  # relative storage made absolute
    assert "every node of the cluster must see this path" in out.err


def test_a_token_on_the_command_line_is_refused(capsys, tmp_path):
    """Every user of the machine can read a process's arguments: the token comes from RAY_AUTH_TOKEN or a file."""
    rc = main(["submit", str(ROOT / "jobs/train_ml100k.yaml"), "--dry-run", "--address", "http://h:8265",
               "--token", "s3cr3t-token"])
    err = capsys.readouterr().err
    assert rc == 2 and "--token: a token on the command line is visible to every user" in err and "s3cr3t" not in err
    rc = main(["submit", str(ROOT / "jobs/train_ml100k.yaml"), "--dry-run", "--address", "http://h:8265",
               "--token-file", str(tmp_path / "absent")])
    assert rc == 1 and f"--token-file {tmp_path / 'absent'}: cannot read it" in capsys.readouterr().err


def test_storage_credentials_in_a_uri_are_never_sent_nor_printed(capsys, monkeypatch):
    from raytrain.storage import CREDENTIALS_ENV

    monkeypatch.delenv(CREDENTIALS_ENV, raising=False)
    uri = "s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/runs?region=us-east-1&session_token=FwoGZXIvYXdz"
    rc = main(["submit", str(ROOT / "jobs/train_ml100k.yaml"), "--dry-run", "--address", "http://h:8265",
               f"storage={uri}"])
    out = capsys.readouterr()
    assert rc == 0
    for secret in ("AKIAEXAMPLE", "wJalrXUtnFEMI", "FwoGZXIvYXdz"):
        assert secret not in out.out and secret not in out.err
    body = json.loads(out.out.split("\n\n", 1)[1])
    sent = parse_spec(yaml.safe_load(body["runtime_env"]["env_vars"]["RAYTRAIN_SPEC"]))
    assert sent.storage == "s3://bucket/runs?region=us-east-1" == body["metadata"]["raytrain_storage"]
    assert "storage credentials given in a URI stay on this machine and are not sent" in out.err
    # they stay in this process's environment, where a local run would open the bucket with them
    assert "wJalrXUtnFEMI" in __import__("os").environ[CREDENTIALS_ENV]


def test_options_values_are_not_taken_for_overrides():
    rest, overrides = split_overrides(["submit", "s.yaml", "--token-file", "a=b", "train.epochs=3", "--address", "h:1"])
    assert overrides == ["train.epochs=3"] and rest == ["submit", "s.yaml", "--token-file", "a=b", "--address", "h:1"]


def test_address_errors(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(SubmissionError, match="no cluster address: pass --address http://HOST:8265 or set RAY_ADDRESS"):
        resolve_address(None)
    with pytest.raises(SubmissionError, match="the Jobs API is the dashboard's HTTP address"):
        resolve_address("ray://head:10001")
    monkeypatch.setenv("RAY_ADDRESS", "head:8265")
    assert resolve_address(None) == "http://head:8265"


def test_unreachable_cluster_is_a_clear_error(capsys):
    assert main(["list", "--address", "http://127.0.0.1:9"]) == 1
    assert "cannot reach the Ray Jobs API at http://127.0.0.1:9" in capsys.readouterr().err
