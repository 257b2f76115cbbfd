"""``raytrain submit | status | logs | stop | list | export``: jobs on a Ray cluster (Jobs API) and its manifests."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..storage import CREDENTIALS_ENV


def cmd_submit(args) -> int:
    from ..spec import load_spec
    from ..submit.jobs import Jobs, build_request, describe_dry_run, prepare_spec, resolve_address, resolve_token

    spec = load_spec(args.spec, args.overrides)
    if args.storage:
        spec = spec.model_copy(update={"storage": args.storage})
    if os.environ.get(CREDENTIALS_ENV):  # adopted from a URI of the spec or the command line
        print("[raytrain] storage credentials given in a URI stay on this machine and are not sent: the cluster "
              "opens its storage with its own (its nodes' environment, e.g. RAYTRAIN_STORAGE_CREDENTIALS or "
              "AWS_ACCESS_KEY_ID, or an instance profile)", file=sys.stderr, flush=True)
    request = build_request(prepare_spec(spec), args.submission_id)
    if args.dry_run:
        print(describe_dry_run(resolve_address(args.address), request, resolve_token(args.token_file)))
        return 0
    jobs = Jobs(args.address, args.token_file)
    job_id = jobs.submit(request)
    print(f"[raytrain] submitted {job_id} to {jobs.address}", flush=True)
    if not args.wait:
        print(job_id)
        return 0
    status = jobs.follow(job_id)
    print(f"[raytrain] job {job_id}: {status}", flush=True)
    return 0 if status == "SUCCEEDED" else 1


def _jobs(args):
    from ..submit.jobs import Jobs

    return Jobs(args.address, args.token_file)


def cmd_status(args) -> int:
    info = _jobs(args).info(args.job_id)
    status = str(info.status).split(".")[-1]
    print(f"{args.job_id}: {status}" + (f" ({info.message})" if info.message else ""))
    return 0


def cmd_logs(args) -> int:
    jobs = _jobs(args)
    if args.follow:
        status = jobs.follow(args.job_id)
        print(f"[raytrain] job {args.job_id}: {status}", file=sys.stderr)
    else:
        sys.stdout.write(jobs.logs(args.job_id))
    return 0


def cmd_stop(args) -> int:
    jobs = _jobs(args)
    stopped = jobs.stop(args.job_id)
    print(f"{args.job_id}: {'stop requested' if stopped else 'already finished'}")
    return 0


def cmd_list(args) -> int:
    # submitted jobs only (a driver that connected with ray.init() is listed by Ray too, without a submission id)
    rows = sorted((j for j in _jobs(args).list() if j.submission_id), key=lambda j: j.start_time or 0)
    print(f"{'job id':<56}{'status':<11}{'name':<28}{'started':<20}")
    for j in rows:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((j.start_time or 0) / 1000))
        name = (j.metadata or {}).get("raytrain_name", "")
        print(f"{j.submission_id:<56}{str(j.status).split('.')[-1]:<11}{name:<28}{started:<20}")
    return 0


def cmd_export(args) -> int:
    from ..spec import load_spec
    from ..submit.kuberay import render_rayjob

    spec = load_spec(args.spec, args.overrides)
    text = render_rayjob(spec, image=args.image, gpus_per_worker=args.gpus_per_worker, namespace=args.namespace)
    if args.output:
        Path(args.output).write_text(text)
        print(f"[raytrain] wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def add_cluster_commands(sub, add_spec) -> None:
    """The cluster commands' parsers; ``add_spec`` adds the SPEC and overrides arguments."""
    p = sub.add_parser("submit", help="submit a spec to a Ray cluster as a job (Ray Jobs API)")
    add_spec(p)
    add_cluster(p)
    p.add_argument("--dry-run", action="store_true", help="print the exact request and send nothing")
    p.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                   help="follow the job's logs until it ends (default) or return at once with its id")
    p.add_argument("--storage", default=None, help="run storage as the cluster sees it (default: the spec's)")
    p.add_argument("--submission-id", default=None, help="job id to use (default: raytrain-NAME-TIME-XXXX)")
    p.set_defaults(func=cmd_submit)
    for name, func, what in (("status", cmd_status, "a job's status"), ("logs", cmd_logs, "a job's logs"),
                             ("stop", cmd_stop, "stop a running job")):
        p = sub.add_parser(name, help=what)
        p.add_argument("job_id")
        add_cluster(p)
        if name == "logs":
            p.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
        p.set_defaults(func=func)
    p = sub.add_parser("list", help="the cluster's jobs")
    add_cluster(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("export", help="render a cluster manifest for a spec")
    p.add_argument("target", choices=["kuberay"], help="kuberay: a RayJob (with its ConfigMap-free spec inline)")
    add_spec(p)
    p.add_argument("--image", default="raytrain:latest", help="container image with raytrain installed")
    p.add_argument("--gpus-per-worker", type=int, default=None, help="default: 1 if train.device is cuda, else 0")
    p.add_argument("--namespace", default=None)
    p.add_argument("--output", "-o", default=None, help="write here instead of stdout")
    p.set_defaults(func=cmd_export)


def add_cluster(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, help="the cluster's dashboard, http://HOST:8265 (default: RAY_ADDRESS)")
    p.add_argument("--token-file", default=None,
                   help="a file holding the token of a cluster with RAY_AUTH_MODE=token (default: RAY_AUTH_TOKEN); "
                        "never on the command line, where every user of the machine can read it")
    p.add_argument("--token", default=None, help=argparse.SUPPRESS)


