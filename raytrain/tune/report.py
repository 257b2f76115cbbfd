"""After a tune run: leaderboard (parquet + printed table), best spec, best checkpoint, PNG plots."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from ..log import get_logger
from ..spec.job import JobSpec
from ..spec.tune_space import tune_of
from ..storage import is_uri, join

log = get_logger(__name__)


def _last(df: pd.DataFrame, column: str) -> float:
    """The column's last reported value (nan when never reported)."""
    return float(df[column].dropna().iloc[-1]) if column in df and df[column].notna().any() else float("nan")


def test_column(metric: str) -> str:
    """The test metric reported beside the tuned one: test_auc, or a sequential model's test ranking metric."""
    from ..spec.training import SEQUENTIAL_METRICS

    return metric.replace("val_", "test_", 1) if metric in SEQUENTIAL_METRICS else "test_auc"


def _trial_rows(spec: JobSpec, results) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    metric, mode = tune_of(spec).metric, tune_of(spec).mode
    test = test_column(metric)
    rows, curves = [], {}
    for r in results:
        df = r.metrics_dataframe
        trial_id = (r.metrics or {}).get("trial_id") or Path(r.path).name
        if df is None or df.empty or metric not in df:
            rows.append({"trial": trial_id, "status": "error" if r.error else "no result", "config": json.dumps(r.config),
                         metric: float("nan"), "epochs": 0, "wall_s": float("nan"), "node": None, "node_id": None,
                         test: float("nan"), "test_epoch": float("nan"), "path": r.path,
                         "finished_at": float("nan")})
            continue
        per_epoch = df[df[metric].notna()].drop_duplicates("epoch", keep="first")
        curves[trial_id] = per_epoch
        best_row = per_epoch.loc[per_epoch[metric].idxmax() if mode == "max" else per_epoch[metric].idxmin()]
        best = best_row[metric]
        epochs = int(per_epoch["epoch"].max())
        if "test_epoch" in df and df["test_epoch"].notna().any():  # measured once, at the best checkpoint
            test_value, test_epoch = _last(df, test), _last(df, "test_epoch")
        else:  # measured every epoch (sequential models): the best epoch's
            test_value, test_epoch = float(best_row.get(test, float("nan"))), float(best_row["epoch"])
        status = "error" if r.error else ("completed" if epochs >= spec.train.epochs else "stopped early")
        last = df.iloc[-1]
        rows.append({
            "trial": trial_id, "status": status, "config": json.dumps(r.config), metric: float(best),
            "epochs": epochs, "wall_s": float(last.get("time_total_s", float("nan"))),
            "node": last.get("node_ip"), "node_id": last.get("node_id"),
            test: test_value, "test_epoch": test_epoch, "path": r.path,
            "finished_at": float(last.get("timestamp", 0)),
        })
    board = pd.DataFrame(rows).sort_values(metric, ascending=(mode == "min"), na_position="last").reset_index(drop=True)
    return board, curves


def _plots(spec: JobSpec, board: pd.DataFrame, curves: dict[str, pd.DataFrame], run_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    metric = tune_of(spec).metric
    fig, ax = plt.subplots(figsize=(8, 5))
    for trial, df in curves.items():
        line, = ax.plot(df["epoch"], df[metric], marker=".", alpha=0.8, linewidth=1)
        status = board.loc[board["trial"] == trial, "status"]
        if len(status) and status.iloc[0] == "stopped early":
            ax.plot(df["epoch"].iloc[-1], df[metric].iloc[-1], "x", color=line.get_color(), markersize=9)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch per trial (x: stopped by {tune_of(spec).scheduler.name})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    per_epoch = run_dir / "metric_per_epoch.png"
    fig.savefig(per_epoch, dpi=110)
    plt.close(fig)

    done = board.dropna(subset=[metric]).sort_values("finished_at")
    better = (lambda a, b: a > b) if tune_of(spec).mode == "max" else (lambda a, b: a < b)
    best, series = None, []
    for v in done[metric]:
        best = v if best is None or better(v, best) else best
        series.append(best)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.step(range(1, len(series) + 1), series, where="post")
    a1.set_xlabel("trials finished")
    a1.set_ylabel(f"best {metric} so far")
    t0 = done["finished_at"].min() - done["wall_s"].iloc[0] if len(done) else 0
    a2.step(done["finished_at"] - t0, series, where="post")
    a2.set_xlabel("wall time (s)")
    for a in (a1, a2):
        a.grid(alpha=0.3)
    fig.suptitle(f"best so far ({tune_of(spec).search.algorithm} + {tune_of(spec).scheduler.name})")
    fig.tight_layout()
    best_so_far = run_dir / "best_so_far.png"
    fig.savefig(best_so_far, dpi=110)
    plt.close(fig)
    return [str(per_epoch), str(best_so_far)]


def write_report(spec: JobSpec, results, run_dir: Path, location: str | None = None) -> dict:
    """Leaderboard, best spec, best checkpoint and plots into ``run_dir`` (the local mirror of ``location`` when the
    run lives on a URI); the leaderboard's ``path`` is each trial's directory where the run lives."""
    from ..train.export import best_checkpoint_location

    metric = tune_of(spec).metric
    test = test_column(metric)
    location = location or str(run_dir)
    board, curves = _trial_rows(spec, results)
    board["path"] = [None if p is None else join(location, "tune", Path(str(p)).name) for p in board["path"]]
    board.to_parquet(run_dir / "leaderboard.parquet", index=False)
    shown = board[["trial", "status", metric, "epochs", "wall_s", test, "test_epoch", "config"]].copy()
    shown["config"] = shown["config"].str.slice(0, 90)
    if board["node_id"].nunique() > 1:  # trials spread over several nodes: say which ran where
        shown.insert(2, "node", board["node_id"].str.slice(0, 8))
    log.info("leaderboard:\n" + shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    summary: dict = {
        "trials": int(len(board)),
        "completed": int((board["status"] == "completed").sum()),
        "stopped_early": int((board["status"] == "stopped early").sum()),
        "errored": int((board["status"] == "error").sum()),
        "trial_epochs": int(board["epochs"].sum()),
    }
    if board[metric].notna().any():
        top = board.iloc[0]
        config = json.loads(top["config"])
        (run_dir / "best_spec.yaml").write_text(best_spec_yaml(spec, config))
        # the trial's best checkpoint by validation AUC: what ensembles, distillation and serving load, and what its
        # test metrics were measured on (raytrain.train.loop evaluates test there)
        best = best_checkpoint_location(join(str(top["path"]), "run"), metric, tune_of(spec).mode)
        link = run_dir / "best_checkpoint"
        if best and not is_uri(location):  # a link beside the leaderboard; on a URI run, result.json names it
            if link.is_symlink() or link.exists():
                link.unlink()
            os.symlink(os.path.relpath(best, run_dir), link)
        test_epoch = top.get("test_epoch")
        at = f" (epoch {int(test_epoch)}'s checkpoint)" if test_epoch == test_epoch and test_epoch is not None else ""
        summary.update({"best_trial": top["trial"], f"best_{metric}": float(top[metric]), "best_config": config,
                        f"best_{test}": float(top[test]), "best_checkpoint": best,
                        "best_test_epoch": None if not at else int(test_epoch)})
        log.info(f"best trial {top['trial']}: {metric} {top[metric]:.4f}, {test} {top[test]:.4f}{at}, "
             f"config {config}; ready-to-run spec: {run_dir / 'best_spec.yaml'}")
    summary["plots"] = _plots(spec, board, curves, run_dir)
    return summary


def best_spec_yaml(spec: JobSpec, config: dict) -> str:
    """The best trial's configuration as a ready-to-run train spec."""
    import yaml

    from ..spec.tune_space import apply_config

    doc = apply_config(spec.model_dump(mode="json"), config)
    doc["name"] = f"{spec.name}-best"
    return yaml.safe_dump(doc, sort_keys=False)
