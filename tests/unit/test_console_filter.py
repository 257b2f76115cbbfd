"""The console filter without Ray: which worker lines reach the terminal, which go to the run's log file, the
progress bar on a terminal and the live tune table."""

from __future__ import annotations

import io
import sys

from raytrain.console import PROGRESS, _Console, progress


def _event(step: int) -> str:
    """What a worker prints for a step: the line ``console.progress`` writes (captured as it writes it)."""
    out = io.StringIO()
    real, sys.stdout = sys.stdout, out
    try:
        progress(1, 5, step, 156, 0.5981, 12000.0)
    finally:
        sys.stdout = real
    line = out.getvalue().strip()
    assert line.startswith(PROGRESS)
    return line


def test_worker_lines_are_filed_and_only_raytrains_and_failures_are_shown(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    c = _Console()
    c.worker_lines({"lines": ["early line"], "pid": 1, "is_err": False})  # before a run directory: kept
    c.attach(tmp_path / "logs")
    c.worker_lines({"lines": ["[TBE=1] Feature Gates: ...", "[raytrain] epoch 1/5: train_loss 0.5 val_auc 0.77",
                              _event(31)],
                    "pid": 42, "actor_name": "RayTrainWorker", "is_err": False})
    c.worker_lines({"lines": ["Traceback (most recent call last):", "  File x", "ValueError: boom"], "pid": 43,
                    "is_err": True})
    c.worker_lines({"lines": ["W1202 some torch warning"], "pid": 44, "is_err": True})
    out = capsys.readouterr()
    assert out.out.splitlines() == ["[raytrain] epoch 1/5: train_loss 0.5 val_auc 0.77"]  # no step line off a tty
    assert "(pid=43) ValueError: boom" in out.err and "torch warning" not in out.err
    c.detach()
    filed = (tmp_path / "logs" / "ray.log").read_text()
    for text in ("early line", "(RayTrainWorker pid=42) [TBE=1] Feature Gates", '"step": 31', "torch warning"):
        assert text in filed


def test_on_a_terminal_steps_move_a_bar_and_the_tune_table_is_redrawn_in_place(monkeypatch):
    out = io.StringIO()
    out.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    c = _Console()
    c.worker_lines({"lines": [_event(31), _event(62)], "pid": 42, "is_err": False})
    assert c.bar is not None and c.bar.n == 62 and c.bar.total == 156
    # a line that only looks like an event moves nothing and breaks nothing
    c.worker_lines({"lines": ["[raytrain:progress] {not json", '[raytrain:progress] {"step": 1}'], "pid": 42,
                    "is_err": False})
    assert c.bar.n == 62
    c.show("[raytrain] epoch 1/5: train_loss 0.5 val_auc 0.77")
    assert c.bar is None and "[raytrain] epoch 1/5: train_loss" in out.getvalue()
    c.live_table("line", ["header", "t1 RUNNING", "best"])
    c.live_table("line", ["header", "t1 TERMINATED", "best"])
    text = out.getvalue()
    assert text.count("header") == 2 and "\x1b[3F\x1b[J" in text and "line" not in text
