"""``raytrain`` command line: validate | plan | run | serve | submit | resume | data."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import RaytrainError, SpecError
from ..storage import adopt


def _add_spec(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="job spec (YAML)")
    p.add_argument("overrides", nargs="*", metavar="KEY.PATH=VALUE",
                   help="override spec fields, e.g. train.optimizer.lr=0.02 (values are parsed as YAML)")


def cmd_validate(args) -> int:
    from ..spec import load_spec, resolved_yaml

    spec = load_spec(args.spec, args.overrides)
    if spec.kind == "serve" and spec.serve is not None:
        # the models already on local storage: can they be served as the spec asks? (runs not made yet, or at a
        # URI, are checked by `raytrain serve` before it deploys)
        from ..serve.sources import servable_problems

        problems = servable_problems(spec.serve, resolve_missing=False)
        if problems:
            raise SpecError(problems, args.spec)
    if args.print_resolved:
        print(resolved_yaml(spec), end="")
    else:
        print(f"{args.spec}: valid {spec.kind} spec '{spec.name}'")
    return 0


def cmd_plan(args) -> int:
    import logging
    import warnings

    logging.getLogger("torchrec").setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    from ..data import schema_of
    from ..sharding import describe_plan, format_plan, make_topology
    from ..sharding.planner import build_constraints, memory_per_rank, meta_model, plan_with_estimate
    from ..spec import load_spec

    overrides = [*args.overrides, f"train.device={args.device}"]
    spec = load_spec(args.spec, overrides)
    schema = schema_of(spec.data)
    model = meta_model(spec, schema)
    topology = make_topology(args.world_size, args.device, hbm_gb=args.hbm_gb, ddr_gb=args.ddr_gb,
                             local_world_size=args.local_world_size, gpu=args.gpu)
    batch_per_rank = max(1, spec.train.batch_size // args.world_size)
    constraints = build_constraints(schema, spec.train.sharding, spec.model.embedding_dim, args.device)
    plan, estimate = plan_with_estimate(model, topology, constraints, batch_per_rank)
    rows = describe_plan(plan, args.world_size)
    per_rank = memory_per_rank(rows, schema, spec.model.embedding_dim, spec.train.optimizer.sparse, args.world_size)
    caps = [args.gpu or "", f"hbm {args.hbm_gb} GiB" if args.hbm_gb else "", f"ddr {args.ddr_gb} GiB" if args.ddr_gb else ""]
    print(f"plan for {spec.name}: {args.world_size} x {args.device} "
          f"({', '.join(c for c in caps if c) or 'default capacities'})")
    print(format_plan(rows, per_rank, schema, spec.model.embedding_dim))
    print(estimate.describe())
    return 0


def run_spec(spec, address: str | None, embedded: bool = False) -> None:
    """Run a validated spec here (also the entrypoint of a submitted job): its kind's runner from the registry
    (raytrain.kinds); then track the result (raytrain.tracking). Without an address it attaches to the local
    cluster `raytrain up` started, when one is up (unless ``embedded``), else starts an embedded Ray."""
    from ..kinds import kind_of

    if not (address or spec.ray.address or os.environ.get("RAY_ADDRESS")):
        from ..local_cluster import running

        local = None if embedded else running()
        if local is not None:  # a warm local cluster (raytrain up): runs attach to it
            from ..local_cluster import auth_env

            print(f"[raytrain] attached to the local raytrain cluster at {local['address']} ({local['cpus']} CPUs; "
                  "`raytrain down` stops it)", flush=True)
            os.environ.update(auth_env(local))  # before Ray is imported: it reads its auth mode then
            address = local["address"]
        elif getattr(spec, "train", None):
            from ..train.resources import check_local_gpus

            check_local_gpus(spec)  # an embedded Ray cannot have GPUs this machine lacks: refused before it starts
    summary = kind_of(spec).run(spec, address)
    if summary is not None:  # a serve job serves until stopped
        from ..tracking import record

        record(spec, summary)


def cmd_run(args) -> int:
    from ..spec import load_spec

    spec = load_spec(args.spec, args.overrides)  # a bad spec stops here, before Ray starts
    run_spec(spec, args.address, embedded=args.embedded)
    return 0


def cmd_serve(args) -> int:
    import json

    from ..serve.runner import run_serve, status, url_of
    from ..spec import load_spec

    if args.status or args.stop:
        if args.spec and args.spec.endswith((".yaml", ".yml")):
            spec = load_spec(args.spec, args.overrides)
            if spec.serve is None:
                raise SpecError([f"{args.spec}: no serve section"])
            url = args.url or url_of(spec)
        else:
            spec, url = None, args.url or "http://127.0.0.1:8000"
        if args.stop:
            import ray
            from ray import serve

            if spec is None:
                raise SpecError(["--stop needs the SPEC (its name is the application's)"])
            ray.init(address=args.address or "auto", log_to_driver=False)
            serve.delete(spec.name)
            print(f"[raytrain] deleted application {spec.name}")
            return 0
        info = status(url)
        print(json.dumps(info, indent=2))
        return 0 if "error" not in info else 1
    if not args.spec:
        raise SpecError(["serve: give a SPEC (or --status)"])
    spec = load_spec(args.spec, args.overrides)
    if spec.serve is None:
        raise SpecError([f"{args.spec}: serve needs a 'serve' section (variants, traffic, replicas, batching)"])
    if spec.kind != "serve":
        spec = spec.model_copy(update={"kind": "serve"})
    if args.update or args.rollback:
        from ..serve.runner import update

        out = update(spec, address=args.address, rollback=args.rollback)
        served = {v: [m["name"] + " " + m["checkpoint"] for m in info["members"]] for v, info in out["variants"].items()}
        print(f"[raytrain] {spec.name} at {out['url']} now serves: {json.dumps(served)}")
        return 0
    run_serve(spec, address=args.address)
    return 0


def cmd_resume(args) -> int:
    """Resumes a tune run, then tracks it as its spec asks (MLflow, TensorBoard), like any run a job makes."""
    import yaml

    from ..spec import parse_spec
    from ..storage import Store
    from ..tracking import record
    from ..tune.runner import resume_tune

    summary = resume_tune(args.run_dir, address=args.address)
    spec = parse_spec(yaml.safe_load(Store(args.run_dir).read_text("spec.yaml")), f"{args.run_dir}/spec.yaml")
    record(spec, summary)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raytrain", description="Train, tune and serve recommender models on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a job spec and report every problem (no cluster contacted)")
    _add_spec(p)
    p.add_argument("--print-resolved", action="store_true", help="print the spec with every default filled in")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plan", help="print the sharding plan and memory per rank for a cluster that need not exist")
    _add_spec(p)
    p.add_argument("--world-size", type=int, required=True, help="number of ranks (GPUs or CPU workers)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--hbm-gb", type=float, default=None, help="GPU memory per rank (GiB)")
    p.add_argument("--ddr-gb", type=float, default=None, help="host memory per rank (GiB)")
    p.add_argument("--local-world-size", type=int, default=None, help="ranks per node (default: 8 for cuda)")
    p.add_argument("--gpu", choices=["h100-80gb"], default=None,
                   help="the accelerator's memory and bandwidths for the cost model's estimate")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("run", help="run a job on an embedded local Ray (or the cluster raytrain up started, or --address)")
    _add_spec(p)
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, the local cluster "
                                                   "raytrain up started, or an embedded Ray)")
    p.add_argument("--embedded", action="store_true", help="an embedded Ray even when raytrain up's cluster is up")
    _add_verbose(p)
    p.set_defaults(func=cmd_run)

    from .cluster import add_cluster_commands

    add_cluster_commands(sub, _add_spec)
    p = sub.add_parser("serve", help="serve a spec's variants on Ray Serve until Ctrl-C; --status asks a running one")
    p.add_argument("spec", nargs="?", default=None, help="job spec with a serve section")
    p.add_argument("overrides", nargs="*", metavar="KEY.PATH=VALUE", help="override spec fields")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("--status", action="store_true", help="print a running application's health and metadata")
    p.add_argument("--stop", action="store_true", help="delete the spec's application from a running cluster")
    p.add_argument("--url", default=None, help="with --status: the application's URL (default: from the spec)")
    p.add_argument("--update", action="store_true", help="roll a running application over in place to the models "
                                                         "its spec resolves to now (no failed requests), then exit")
    p.add_argument("--rollback", action="store_true", help="roll a running application back in place to the version "
                                                           "it served before the current one, then exit")
    _add_verbose(p)
    p.set_defaults(func=cmd_serve)

    from .data import add_data_commands

    add_data_commands(sub)

    from .local import add_local_commands

    add_local_commands(sub)

    p = sub.add_parser("resume", help="resume an interrupted tune run from its run directory")
    p.add_argument("run_dir", help="the run directory (runs/<name>/<timestamp>)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    _add_verbose(p)
    p.set_defaults(func=cmd_resume)
    return parser


def _add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", "-v", action="store_true",
                   help="show Ray's, TorchRec's and the workers' own output too (default: in <run>/logs/ray.log)")


# options that take a value: their value is never a KEY.PATH=VALUE override (a token may hold '=')
VALUE_OPTIONS = {"--url", "--address", "--token", "--token-file",
                 "--storage", "--submission-id", "--image", "--namespace", "--output", "-o",
                 "--world-size", "--device", "--hbm-gb", "--ddr-gb", "--local-world-size", "--gpus-per-worker", "--gpu"}


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """KEY.PATH=VALUE overrides may stand anywhere after the command, also after options."""
    rest, overrides = argv[:1], []
    for i, a in enumerate(argv[1:], start=1):
        if "=" in a and not a.startswith("-") and argv[i - 1] not in VALUE_OPTIONS:
            overrides.append(a)
        else:
            rest.append(a)
    return rest, overrides


def _hide_credentials(argv: list[str]) -> None:
    """This process's command line without the credentials of any URI in it: ``ps`` shows a process's command line
    to every user of the machine, and Ray records a driver's as its job's entrypoint in the job table."""
    from ..credentials import redact

    shown = [redact(a) for a in argv]
    if shown != argv:
        import setproctitle

        setproctitle.setproctitle(" ".join(["raytrain", *shown]))


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        _hide_credentials(sys.argv[1:])
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, overrides = split_overrides(argv)
    args = build_parser().parse_args(rest)
    if getattr(args, "token", None) is not None:
        print("error: --token: a token on the command line is visible to every user of this machine (ps); put it "
              "in RAY_AUTH_TOKEN or a file given as --token-file", file=sys.stderr)
        return 2
    for key, value in vars(args).items():  # credentials in a URI argument stay in this process's environment
        if isinstance(value, str):
            setattr(args, key, adopt(value))
    if hasattr(args, "overrides"):
        args.overrides = overrides
    from .. import console

    console.set_verbose(bool(getattr(args, "verbose", False)))
    return run_reporting_errors(lambda: args.func(args))


def run_reporting_errors(fn) -> int:
    """fn's exit code; a raytrain error becomes one line on stderr and its exit code (also for submitted jobs)."""
    try:
        return fn()
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except RaytrainError as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
