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
from ..kinds import JobSpec
from ..log import get_logger
from ..spec import resolved_yaml
from .sources import ResolvedVariant, resolve, servable_problems

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
    from .app import build_app

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
    init_ray(spec, address)
    t0 = time.time()
    serve.start(http_options={"host": spec.serve.host, "port": spec.serve.port})
    app = build_app(spec, variants, log_dir=str(run_dir / "logs"))
    serve.run(app, name=spec.name, route_prefix=spec.serve.route_prefix, blocking=False)
    url = url_of(spec)
    wait_healthy(url, timeout_s=300)
    info = {"url": url, "app": spec.name, "ready_s": round(time.time() - t0, 1),
            "variants": {v.name: {"share": spec.serve.shares[v.name], "source": v.source,
                                  "members": [m.__dict__ for m in v.members], "combine": (v.combiner or {}).get("kind"),
                                  "explore": spec.serve.explore_of(v.name)}
                         for v in variants}}
    info["logs"] = str(run_dir / "logs")  # every request (variant, user, items); exploring decisions; feedback
    (run_dir / "serve.json").write_text(json.dumps(info, indent=2))
    log.info(f"serving {spec.name} at {url} (ready in {info['ready_s']}s): POST /predict, POST /recommend, "
         f"POST /feedback, GET /healthz, GET /metadata; request logs: {run_dir / 'logs'}")
    return {"run_dir": str(run_dir), **info}


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
