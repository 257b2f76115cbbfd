"""Kind ``serve``: resolve the variants' models on storage, deploy the application, serve until stopped."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from .. import console
from ..errors import SpecError
from ..log import get_logger
from ..spec import resolved_yaml
from ..spec.job import JobSpec
from .refs import ResolvedVariant
from .sources import resolve, servable_problems

log = get_logger(__name__)


def url_of(spec: JobSpec) -> str:
    assert spec.serve is not None
    return f"http://{spec.serve.host}:{spec.serve.port}{spec.serve.route_prefix.rstrip('/')}"


def deploy(spec: JobSpec, address: str | None = None, variants: list[ResolvedVariant] | None = None,
           run_dir: Path | None = None) -> dict:
    """Start (or update) the application and wait until it answers /healthz. Returns what serve.json records."""
    from ray import serve

    from ..runs import new_run_dir
    from ..train.runner import init_ray
    from .build import build_app

    assert spec.serve is not None
    if variants is None:
        variants = [resolve(name, v) for name, v in spec.serve.variants.items()]
    problems = servable_problems(spec.serve, variants)
    if problems:
        raise SpecError(problems)
    for v in variants:
        log.info(f"variant {v.name} ({spec.serve.shares[v.name]:.0%} of users): {v.source}; "
             f"{len(v.members)} member(s): {', '.join(m.name for m in v.members)}")
    run_dir = run_dir or new_run_dir(spec)
    (run_dir / "spec.yaml").write_text(resolved_yaml(spec))
    console.attach(run_dir / "logs")
    _request_path(spec, address)
    init_ray(spec, address)
    t0 = time.time()
    serve.start(http_options={"host": spec.serve.host, "port": spec.serve.port})
    app = build_app(spec, variants, log_dir=str(run_dir / "logs"))
    serve.run(app, name=spec.name, route_prefix=spec.serve.route_prefix, blocking=False)
    url = url_of(spec)
    wait_running(spec.name, timeout_s=300)  # an update: until every replica of the new version is up
    wait_healthy(url, timeout_s=300)
    info = {"url": url, "app": spec.name, "ready_s": round(time.time() - t0, 1),
            "variants": {v.name: {"share": spec.serve.shares[v.name], "source": v.source,
                                  "members": [m.__dict__ for m in v.members], "combine": (v.combiner or {}).get("kind"),
                                  "explore": spec.serve.explore_of(v.name)}
                         for v in variants}}
    info["logs"] = str(run_dir / "logs")  # every request (variant, user, items); exploring decisions; feedback
    (run_dir / "serve.json").write_text(json.dumps(info, indent=2))
    record_version(spec, run_dir, variants)
    log.info(f"serving {spec.name} at {url} (ready in {info['ready_s']}s): POST /predict, POST /recommend, "
         f"POST /feedback, GET /healthz, GET /metadata; request logs: {run_dir / 'logs'}")
    return {"run_dir": str(run_dir), **info}


HAPROXY_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}


def _request_path(spec: JobSpec, address: str | None) -> None:
    """``serve.request_path: haproxy``: Serve reads its request path from the environment its processes start with,
    so it is set here for the local Ray raytrain is about to start; a running Ray keeps the one it started with."""
    import os

    import ray

    assert spec.serve is not None
    if spec.serve.request_path != "haproxy":
        return
    if ray.is_initialized() or address or spec.ray.address or os.environ.get("RAY_ADDRESS"):
        if any(os.environ.get(k) != v for k, v in HAPROXY_ENV.items()):
            log.warning("serve.request_path haproxy: this Ray is already running; it serves through HAProxy only if "
                        "it was started with " + " ".join(f"{k}={v}" for k, v in HAPROXY_ENV.items()))
        return
    os.environ.update(HAPROXY_ENV)


def wait_running(app: str, timeout_s: float = 300) -> None:
    """Until Serve reports the application RUNNING (after a deploy or an in-place update)."""
    from ray import serve

    deadline, status = time.time() + timeout_s, None
    while time.time() < deadline:
        found = serve.status().applications.get(app)
        status = found.status if found is not None else None
        if status == "RUNNING":
            return
        if status == "DEPLOY_FAILED":
            raise RuntimeError(f"application {app}: deploy failed: {found.message if found else ''}")
        time.sleep(0.5)
    raise TimeoutError(f"application {app} was not running within {timeout_s:.0f}s (status {status})")


def versions_file(spec: JobSpec) -> Path:
    """Where the versions an application served are recorded, oldest first: ``<storage>/<name>/versions.json``."""
    return Path(spec.storage).expanduser().resolve() / spec.name / "versions.json"


def record_version(spec: JobSpec, run_dir: Path, variants: list[ResolvedVariant]) -> None:
    from dataclasses import asdict

    path = versions_file(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    found = json.loads(path.read_text()) if path.exists() else []
    found.append({"deployed_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "serve_run": str(run_dir),
                  "variants": [{"name": v.name, "members": [asdict(m) for m in v.members], "combiner": v.combiner,
                                "source": v.source} for v in variants]})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(found, indent=2))
    tmp.replace(path)


def update(spec: JobSpec, address: str | None = None, rollback: bool = False) -> dict:
    """Roll a running application over in place to what its spec resolves to now (the newest runs), or with
    ``rollback`` to the version it served before the current one. Serve replaces the replicas of the deployments
    whose model changed (new replicas start, old ones finish their requests); the others keep running."""
    from .refs import MemberRef

    assert spec.serve is not None
    variants = None
    if rollback:
        path = versions_file(spec)
        found = json.loads(path.read_text()) if path.exists() else []
        if len(found) < 2:
            raise SpecError([f"--rollback: {spec.name} has no earlier version recorded in {path}"])
        earlier = found[-2]
        variants = [ResolvedVariant(v["name"], [MemberRef(**m) for m in v["members"]], v["combiner"], v["source"])
                    for v in earlier["variants"]]
        missing = sorted(set(spec.serve.variants) ^ {v.name for v in variants})
        if missing:
            raise SpecError([f"--rollback: the earlier version served other variants ({', '.join(missing)} differ); "
                             "roll back by serving its spec"])
        log.info(f"rolling back to the version deployed at {earlier['deployed_at']}")
    return deploy(spec, address or "auto", variants)


def wait_healthy(url: str, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    last = ""
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(0.5)
    raise TimeoutError(f"{url}/healthz did not answer within {timeout_s:.0f}s ({last}); if Serve was already "
                       "running on this Ray cluster, it kept the host and port it started with")


def shutdown(spec: JobSpec) -> None:
    from ray import serve

    serve.delete(spec.name)
    log.info(f"application {spec.name} deleted")


def run_serve(spec: JobSpec, address: str | None = None, block: bool = True,
              variants: list[ResolvedVariant] | None = None, run_dir: Path | None = None) -> dict:
    """Deploy, then (``block``) serve until Ctrl-C or SIGTERM and shut the application down cleanly."""
    out = deploy(spec, address, variants, run_dir)
    if not block:
        return out
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    log.info("press Ctrl-C to stop")
    try:
        while not stop.is_set():
            stop.wait(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutdown(spec)
    return out


def status(url: str) -> dict:
    """What a running application says of itself (/healthz and /metadata), for ``raytrain serve --status``."""
    out: dict = {"url": url}
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
            out["health"] = json.loads(r.read())
        with urllib.request.urlopen(f"{url}/metadata", timeout=30) as r:
            out["metadata"] = json.loads(r.read())
    except (urllib.error.URLError, OSError) as e:
        out["error"] = f"not answering: {e}"
    return out
