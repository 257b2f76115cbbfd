"""Render a KubeRay ``RayJob`` manifest for a job spec.

The RayJob brings up a Ray cluster (a head that schedules nothing and ``train.workers`` GPU workers),
runs ``python -m raytrain.submit.entry`` with the resolved spec in ``RAYTRAIN_SPEC`` (as ``raytrain
submit`` does) and deletes the cluster afterwards. Token authentication is on: every Ray container and
the submitter read the token from the Secret ``raytrain-ray-token`` (create it first, see
``cluster/README.md``). Run directories go to a shared volume (PVC ``raytrain-runs``) mounted at
``/mnt/raytrain`` on every node, because checkpoints are written by every worker.
"""

from __future__ import annotations

import re
import sys

import yaml

from ..spec import resolved_yaml
from ..spec.job import JobSpec
from ..train.resources import RUNTIME_ENV
from .jobs import ENTRYPOINT, SPEC_ENV

RAY_VERSION = "2.60.0"
TOKEN_SECRET = "raytrain-ray-token"
RUNS_PVC = "raytrain-runs"
MOUNT = "/mnt/raytrain"


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the runtime env, the spec) as readable literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _token_env() -> list[dict]:
    return [{"name": "RAY_AUTH_MODE", "value": "token"},
            {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": TOKEN_SECRET, "key": "token"}}}]


def _container(name: str, image: str, cpu: str, memory: str, gpus: int, ports: list[dict] | None = None) -> dict:
    limits: dict[str, str | int] = {"cpu": cpu, "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = gpus
    c = {"name": name, "image": image, "env": _token_env(),
         "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": limits},
         "volumeMounts": [{"name": "runs", "mountPath": MOUNT}]}
    if ports:
        c["ports"] = ports
    return c


def _pod(container: dict, gpus: int) -> dict:
    spec: dict = {"containers": [container],
                  "volumes": [{"name": "runs", "persistentVolumeClaim": {"claimName": RUNS_PVC}}]}
    if gpus:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"spec": spec}


def k8s_name(name: str) -> str:
    """A DNS-1123 name (lower case, digits, '-'; at most 63 characters)."""
    out = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return ("raytrain-" + out)[:63].rstrip("-")


def rayjob(spec: JobSpec, image: str = "raytrain:latest", gpus_per_worker: int | None = None,
           namespace: str | None = None) -> dict:
    gpus = gpus_per_worker if gpus_per_worker is not None else (1 if spec.train.device == "cuda" else 0)
    spec = spec.model_copy(update={"storage": f"{MOUNT}/runs"})
    runtime_env = {"env_vars": {**RUNTIME_ENV["env_vars"], SPEC_ENV: resolved_yaml(spec)}}
    if gpus and not spec.train.resources_per_worker.gpu:
        print(f"[raytrain] note: train.resources_per_worker.gpu is 0 while each worker pod has {gpus} GPU(s); "
              "set train.device: cuda and resources_per_worker.gpu: 1 so Ray Train places one worker per GPU",
              file=sys.stderr)
    workers = spec.train.workers
    cpu = str(max(1, int(round(spec.train.resources_per_worker.cpu))) + 3)  # the worker + its data loading
    head_ports = [{"containerPort": 6379, "name": "gcs"}, {"containerPort": 8265, "name": "dashboard"},
                  {"containerPort": 10001, "name": "client"}]
    metadata: dict = {"name": k8s_name(spec.name), "labels": {"app.kubernetes.io/managed-by": "raytrain",
                                                              "raytrain/kind": spec.kind}}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": metadata,
        "spec": {
            "entrypoint": ENTRYPOINT,
            "runtimeEnvYAML": yaml.dump(runtime_env, Dumper=_Dumper, sort_keys=False),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "backoffLimit": 0,
            "submitterPodTemplate": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "ray-job-submitter", "image": image, "env": _token_env()}]}},
            "rayClusterSpec": {
                "rayVersion": RAY_VERSION,
                "headGroupSpec": {
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": _pod(_container("ray-head", image, "4", "16Gi", 0, head_ports), 0),
                },
                "workerGroupSpecs": [{
                    "groupName": "gpu-workers" if gpus else "cpu-workers",
                    "replicas": workers, "minReplicas": workers, "maxReplicas": workers,
                    "rayStartParams": {},
                    "template": _pod(_container("ray-worker", image, cpu, "32Gi", gpus), gpus),
                }],
            },
        },
    }


def render_rayjob(spec: JobSpec, image: str = "raytrain:latest", gpus_per_worker: int | None = None,
                  namespace: str | None = None) -> str:
    head = (f"# RayJob for raytrain spec '{spec.name}' (kind {spec.kind}), rendered by `raytrain export kuberay`.\n"
            f"# Needs: the KubeRay operator, Secret {TOKEN_SECRET} (key: token), PVC {RUNS_PVC} (ReadWriteMany).\n")
    return head + yaml.dump(rayjob(spec, image, gpus_per_worker, namespace), Dumper=_Dumper, sort_keys=False)
