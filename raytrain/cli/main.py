"""``raytrain`` command line: validate | plan | run | resume."""

from __future__ import annotations

import argparse
import sys

from ..errors import RaytrainError, SpecError


def _add_spec(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="job spec (YAML)")
    p.add_argument("overrides", nargs="*", metavar="KEY.PATH=VALUE",
                   help="override spec fields, e.g. train.optimizer.lr=0.02 (values are parsed as YAML)")


def cmd_validate(args) -> int:
    from ..spec import load_spec, resolved_yaml

    spec = load_spec(args.spec, args.overrides)
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
    from ..sharding import describe_plan, format_plan, make_plan, make_topology
    from ..sharding.planner import build_constraints, memory_per_rank, meta_model
    from ..spec import load_spec

    overrides = [*args.overrides, f"train.device={args.device}"]
    spec = load_spec(args.spec, overrides)
    schema = schema_of(spec.data)
    model = meta_model(spec, schema)
    topology = make_topology(args.world_size, args.device, hbm_gb=args.hbm_gb, ddr_gb=args.ddr_gb,
                             local_world_size=args.local_world_size)
    plan = make_plan(model, topology, build_constraints(schema, spec.train.sharding))
    rows = describe_plan(plan, args.world_size)
    per_rank = memory_per_rank(rows, schema, spec.model.embedding_dim, spec.train.optimizer.sparse, args.world_size)
    caps = [f"hbm {args.hbm_gb} GiB" if args.hbm_gb else "", f"ddr {args.ddr_gb} GiB" if args.ddr_gb else ""]
    print(f"plan for {spec.name}: {args.world_size} x {args.device} "
          f"({', '.join(c for c in caps if c) or 'default capacities'})")
    print(format_plan(rows, per_rank, schema, spec.model.embedding_dim))
    return 0


def cmd_run(args) -> int:
    from ..spec import load_spec

    spec = load_spec(args.spec, args.overrides)  # a bad spec stops here, before Ray starts
    if spec.kind == "bandit":
        from ..bandit.runner import run_bandit

        run_bandit(spec)
        return 0
    if spec.kind == "tune":
        from ..tune.runner import run_tune

        run_tune(spec, address=args.address)
    else:
        from ..train.runner import run_train

        run_train(spec, address=args.address)
    return 0


def cmd_resume(args) -> int:
    from ..tune.runner import resume_tune

    resume_tune(args.run_dir, address=args.address)
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
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("run", help="run a job on an embedded local Ray (or --address)")
    _add_spec(p)
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("resume", help="resume an interrupted tune run from its run directory")
    p.add_argument("run_dir", help="the run directory (runs/<name>/<timestamp>)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    p.set_defaults(func=cmd_resume)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # KEY.PATH=VALUE overrides may stand anywhere after the command, also after options
    overrides = [a for a in argv[1:] if "=" in a and not a.startswith("-")]
    args = build_parser().parse_args([a for a in argv if a not in overrides or a == argv[0]])
    if hasattr(args, "overrides"):
        args.overrides = overrides
    try:
        return args.func(args)
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
