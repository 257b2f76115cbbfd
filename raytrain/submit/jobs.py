"""Ray Jobs API client side: submit a spec, follow, list, stop; token authentication; dry runs.

A submission is self-contained: the resolved spec (overrides applied, defaults filled in) travels
in the job's runtime environment as ``RAYTRAIN_SPEC`` and the entrypoint ``python -m
raytrain.submit.entry`` runs it on the cluster, so nothing is uploaded besides the request itself and
``--dry-run`` can print exactly what would be sent. The cluster's ``python`` must have raytrain
installed (the images in ``cluster/`` do).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import SubmissionError
from ..spec import resolved_yaml
from ..spec.job import JobSpec
from ..train.resources import RUNTIME_ENV

ENTRYPOINT = "python -m raytrain.submit.entry"
SPEC_ENV = "RAYTRAIN_SPEC"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def resolve_address(address: str | None) -> str:
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SubmissionError("no cluster address: pass --address http://HOST:8265 or set RAY_ADDRESS")
    if address.startswith("ray://") or address == "auto":
        raise SubmissionError(f"address {address!r}: the Jobs API is the dashboard's HTTP address, "
                              "for example http://HOST:8265")
    if "://" not in address:
        address = "http://" + address
    return address.rstrip("/")


def resolve_token(token_file: str | None) -> str | None:
    """The cluster's token: the first line of ``token_file``, else RAY_AUTH_TOKEN (never a command-line argument,
    which every user of the machine can read in the process list)."""
    if token_file:
        try:
            token = Path(token_file).expanduser().read_text().strip()
        except OSError as e:
            raise SubmissionError(f"--token-file {token_file}: cannot read it ({e.strerror})") from None
        if not token:
            raise SubmissionError(f"--token-file {token_file}: empty")
        return token
    return os.environ.get("RAY_AUTH_TOKEN") or None


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def prepare_spec(spec: JobSpec) -> JobSpec:
    """A relative storage path would land in the job's scratch directory: make it absolute here."""
    if "://" not in spec.storage and not Path(spec.storage).expanduser().is_absolute():
        absolute = str(Path(spec.storage).expanduser().resolve())
        print(f"[raytrain] storage {spec.storage!r} -> {absolute} (every node of the cluster must see this path; "
              "a multi-node cluster needs a shared filesystem there)", file=sys.stderr, flush=True)
        spec = spec.model_copy(update={"storage": absolute})
    return spec


def build_request(spec: JobSpec, submission_id: str | None = None) -> dict[str, Any]:
    """The body of POST /api/jobs/ for this spec."""
    submission_id = submission_id or f"raytrain-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    env = dict(RUNTIME_ENV["env_vars"])
    env[SPEC_ENV] = resolved_yaml(spec)
    return {
        "entrypoint": ENTRYPOINT,
        "submission_id": submission_id,
        "runtime_env": {"env_vars": env},
        "metadata": {"raytrain_name": spec.name, "raytrain_kind": spec.kind, "raytrain_storage": spec.storage},
        "entrypoint_num_cpus": 0,
    }


def describe_dry_run(address: str, request: dict, token: str | None) -> str:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer ***"  # the token itself is never printed
    lines = [f"POST {address}/api/jobs/"] + [f"{k}: {v}" for k, v in headers.items()] + ["",
                                                                                          json.dumps(request, indent=2)]
    return "\n".join(lines)


class Jobs:
    """JobSubmissionClient with errors that say what went wrong and where."""

    def __init__(self, address: str | None, token_file: str | None):
        self.address = resolve_address(address)
        self.token = resolve_token(token_file)
        from ray.job_submission import JobSubmissionClient

        try:
            self.client = self._call(JobSubmissionClient, self.address, headers=_headers(self.token))
        except SubmissionError:
            raise
        except Exception as e:  # noqa: BLE001 - the client raises plain exceptions for every failure
            raise SubmissionError(f"cannot use the Ray Jobs API at {self.address}: {e}") from None

    def _call(self, fn, *args, job_id: str | None = None, **kwargs):
        from ray.exceptions import AuthenticationError

        try:
            return fn(*args, **kwargs)
        except AuthenticationError as e:
            why = "the token was rejected" if self.token else "it requires a token and none was given"
            raise SubmissionError(f"the cluster at {self.address} refused the request: {why} "
                                  f"(set RAY_AUTH_TOKEN or pass --token-file). {str(e).splitlines()[0]}") from None
        except ConnectionError as e:
            raise SubmissionError(f"cannot reach the Ray Jobs API at {self.address} ({e}); is the head node "
                                  "running with its dashboard on that port?") from None
        except RuntimeError as e:
            text = str(e)
            if job_id is not None and ("404" in text or "does not exist" in text):
                raise SubmissionError(f"no job {job_id!r} on the cluster at {self.address}") from None
            raise SubmissionError(f"Ray Jobs API at {self.address}: {text}") from None

    def submit(self, request: dict) -> str:
        return self._call(self.client.submit_job, **request)

    def info(self, job_id: str):
        return self._call(self.client.get_job_info, job_id, job_id=job_id)

    def logs(self, job_id: str) -> str:
        return self._call(self.client.get_job_logs, job_id, job_id=job_id)

    def stop(self, job_id: str) -> bool:
        self.info(job_id)  # an unknown id is an error, not a silent False
        return self._call(self.client.stop_job, job_id, job_id=job_id)

    def list(self):
        return self._call(self.client.list_jobs)

    def follow(self, job_id: str, out=sys.stdout, poll_s: float = 1.0, print_logs: bool = True) -> str:
        """Stream the job's log lines until it ends; the final status."""
        shown = 0
        while True:
            status = str(self.info(job_id).status).split(".")[-1]
            if print_logs:
                text = self.logs(job_id)
                if len(text) > shown:
                    out.write(text[shown:])
                    out.flush()
                    shown = len(text)
            if status in TERMINAL:
                return status
            time.sleep(poll_s)
