"""``raytrain up | down``: a warm local Ray cluster that runs attach to (raytrain.local_cluster)."""

from __future__ import annotations

import os


def cmd_up(args) -> int:
    from ..local_cluster import up

    state = up(args.cpus, args.port, args.warm_workers)
    print(f"[raytrain] local cluster: {state['address']}", flush=True)
    return 0


def cmd_down(args) -> int:
    from ..local_cluster import down

    down()
    return 0


def add_local_commands(sub) -> None:
    p = sub.add_parser("up", help="start a warm local Ray cluster that later runs attach to (until raytrain down)")
    p.add_argument("--cpus", type=int, default=max(8, os.cpu_count() or 1),
                   help="logical CPUs of the cluster (default: 8 or this machine's cores, whichever is more)")
    p.add_argument("--port", type=int, default=0, help="its GCS port (default: a free one)")
    p.add_argument("--warm-workers", type=int, default=4, metavar="N",
                   help="worker processes kept started with torch and Ray Train imported, for the next run (a 2-worker "
                        "run uses 4 with its controller and synchronization actor; about 0.4 GiB each while idle; "
                        "default 4, 0 for none)")
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("down", help="stop the local cluster raytrain up started, and every process of it")
    p.set_defaults(func=cmd_down)
