"""``raytrain data``: write synthetic Criteo logs, convert Criteo logs to parquet (both in parallel); export a
sequential model's user vectors as features."""

from __future__ import annotations

import os
import time
from pathlib import Path


def _ray(address: str | None) -> None:
    """Ray for the fan-out: the given cluster, or a local one sized to this machine."""
    import ray

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)


def _sizes(text: str | None) -> list[int]:
    from ..data.criteo import KAGGLE_CARDINALITIES
    from ..errors import DataError

    if not text:
        return list(KAGGLE_CARDINALITIES)
    vals = [int(v) for v in text.split(",")]
    if len(vals) == 1:
        return vals * 26
    if len(vals) != 26:
        raise DataError(f"--num-embeddings: one value or 26, got {len(vals)}")
    return vals


def cmd_synth(args) -> int:
    from ..data.criteo_synth import day_rows, write_day
    from ..data.parallel import fan_out

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    names = [out / (f"day_{d}" + (".gz" if args.gzip else "")) for d in range(args.days)]
    if args.days > 1:
        _ray(args.address)
    calls = [(str(p), n, args.seed, d, args.gzip) for d, (p, n) in enumerate(zip(names, day_rows(args.rows, args.days)))]
    sizes = fan_out(write_day, calls, f"wrote {args.days} day file(s)")
    print(f"[raytrain] {args.rows:,} Criteo-format rows in {args.days} file(s) under {out} "
          f"({sum(sizes) / 2**20:,.0f} MiB, {time.perf_counter() - t0:.0f}s)")
    return 0


def cmd_convert(args) -> int:
    from ..data.criteo import convert_file, input_files
    from ..data.parallel import fan_out

    files = input_files(args.src)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = _sizes(args.num_embeddings)
    if args.max_num_embeddings:
        sizes = [min(n, args.max_num_embeddings) for n in sizes]
    if len(files) > 1:
        _ray(args.address)
    t0 = time.perf_counter()
    calls = [(f, str(out / (Path(f).name.removesuffix(".gz") + ".parquet")), sizes, args.bad_lines) for f in files]
    stats = fan_out(convert_file, calls, f"converted {len(files)} file(s)")
    rows, skipped = sum(s["rows"] for s in stats), sum(s["skipped"] for s in stats)
    print(f"[raytrain] {rows:,} rows from {len(files)} file(s) to {out} in {time.perf_counter() - t0:.0f}s"
          + (f"; {skipped:,} bad line(s) skipped" if skipped else ""))
    return 0


def cmd_user_vectors(args) -> int:
    import pyarrow.parquet as pq

    from ..train.sequential.export import user_vector_table

    t0 = time.perf_counter()
    table = user_vector_table(args.run)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out)
    print(f"[raytrain] {table.num_rows:,} users x {table.num_columns - 1} dims from {args.run} -> {args.out} "
          f"({time.perf_counter() - t0:.0f}s); use it as data.history.user_vectors")
    return 0


def add_data_commands(sub) -> None:
    p = sub.add_parser("data", help="Criteo logs: write synthetic ones, convert to parquet; user vectors")
    dsub = p.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("synth-criteo", help="write Criteo-format TSV day files with Kaggle-shaped cardinalities")
    s.add_argument("out", help="folder for day_0, day_1, ...")
    s.add_argument("--rows", type=int, required=True, help="rows in all")
    s.add_argument("--days", type=int, default=1, help="files (one per day)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--gzip", action="store_true", help="write day_N.gz")
    s.add_argument("--address", default=None, help="Ray cluster for the fan-out (default: a local Ray)")
    s.set_defaults(func=cmd_synth)
    c = dsub.add_parser("convert", help="Criteo TSV (plain or .gz) -> parquet with DLRM's preprocessing")
    c.add_argument("src", help="a file, a folder of day files or a glob")
    c.add_argument("out", help="folder for the parquet files (one per input file)")
    c.add_argument("--num-embeddings", default=None, help="table rows: one value or 26, comma-separated "
                                                          "(default: Criteo Kaggle's cardinalities)")
    c.add_argument("--max-num-embeddings", type=int, default=None, help="cap on every table's rows")
    c.add_argument("--bad-lines", choices=["error", "skip"], default="error")
    c.add_argument("--address", default=None, help="Ray cluster for the fan-out (default: a local Ray)")
    c.set_defaults(func=cmd_convert)
    u = dsub.add_parser("user-vectors", help="a sequential run's user vectors -> parquet (data.history.user_vectors)")
    u.add_argument("run", help="a sasrec / hstu run directory")
    u.add_argument("out", help="the parquet file to write")
    u.set_defaults(func=cmd_user_vectors)


