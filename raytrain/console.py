"""What the terminal shows: raytrain's own lines and progress. Everything else that Ray, Ray Train, Ray Tune,
TorchRec and FBGEMM print (in the driver and in every worker) goes to ``<run>/logs/ray.log``; ``--verbose`` shows
it all as before.

Worker output reaches the driver through Ray's log streaming (``log_to_driver``); ``quiet_ray`` replaces Ray's
printer with one that keeps the lines raytrain's workers print (``[raytrain] ...``) and the tracebacks of
failures, and files the rest. The driver's own loggers (``ray``, ``torchrec``, ``fbgemm_gpu``) print warnings
and errors only; their info lines go to the same file. Rank 0 reports its steps as structured progress events
(``progress``: a JSON object on a line of its own); on a terminal they move a progress bar (tqdm), elsewhere (CI,
a log file) they are only filed and the epoch's summary line is the progress.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path
from typing import IO, Any

PREFIX = "[raytrain]"
PROGRESS = "[raytrain:progress] "  # a structured progress event: this prefix and one JSON object (``progress``)
_LOGGERS = ("ray", "torchrec", "fbgemm_gpu", "torch.distributed", "optuna")


class _Console:
    def __init__(self) -> None:
        self.verbose = False
        self.file: IO[str] | None = None
        self.pending: list[str] = []  # lines before a run directory is known (bounded)
        self.lock = threading.Lock()
        self.bar: Any = None
        self.bar_epoch: tuple[int, int] | None = None
        self.handler: logging.Handler | None = None
        self.table_lines = 0  # lines of the live table last drawn (redrawn in place on a terminal)

    # ---- the file ----------------------------------------------------------------------------------------

    def attach(self, log_dir: str | Path) -> None:
        """Send what the console does not show to ``log_dir``/ray.log from now on (and what came before)."""
        if self.verbose:
            return
        path = Path(log_dir)
        path.mkdir(parents=True, exist_ok=True)
        with self.lock:
            if self.file is not None:
                self.file.close()
            self.file = open(path / "ray.log", "a", buffering=1)  # noqa: SIM115 - kept open for the run
            self.file.writelines(line + "\n" for line in self.pending)
            self.pending.clear()
        self._remove_handler()
        self.handler = logging.StreamHandler(self.file)
        self.handler.setLevel(logging.INFO)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for name in _LOGGERS:
            logging.getLogger(name).addHandler(self.handler)

    def _remove_handler(self) -> None:
        if self.handler is not None:
            for name in _LOGGERS:
                logging.getLogger(name).removeHandler(self.handler)
            self.handler = None

    def detach(self) -> None:
        """Stop filing (the loggers' file handler removed, the file closed)."""
        self._remove_handler()
        with self.lock:
            if self.file is not None:
                self.file.close()
                self.file = None

    def file_line(self, line: str) -> None:
        with self.lock:
            if self.file is not None:
                self.file.write(line + "\n")
            elif len(self.pending) < 10_000:
                self.pending.append(line)

    # ---- the terminal -------------------------------------------------------------------------------------

    def progress(self, event: dict) -> None:
        """A progress event (``progress``): it moves the progress bar on a terminal; elsewhere the epoch's summary
        line is the plain-text progress, and the event stays in the file."""
        if not sys.stdout.isatty():
            return
        with self.lock:
            epoch = (int(event["epoch"]), int(event["epochs"]))
            if self.bar is None or self.bar_epoch != epoch:
                self._close_bar()
                from tqdm import tqdm

                self.bar = tqdm(total=int(event["steps"]), desc=f"epoch {epoch[0]}/{epoch[1]}", unit="step",
                                leave=False)
                self.bar_epoch = epoch
            self.bar.update(int(event["step"]) - self.bar.n)
            self.bar.set_postfix_str(f"loss {float(event['loss']):.4f} {float(event['examples_per_s']):,.0f} "
                                     "examples/s")

    def show(self, line: str, err: bool = False) -> None:
        """A line of raytrain's, printed (after the progress bar, if one is drawn)."""
        with self.lock:
            self._close_bar()
            print(line, file=sys.stderr if err else sys.stdout, flush=True)
            self.table_lines = 0  # a live table is drawn afresh below this line

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar, self.bar_epoch = None, None

    def worker_lines(self, data: dict) -> None:
        """Ray's log-streaming handler: one batch of lines of one worker process."""
        lines = data.get("lines") or []
        who = data.get("actor_name") or data.get("task_name") or ""
        pid = data.get("pid")
        tag = f"({pid}) " if pid in ("raylet", "autoscaler") else f"({who + ' ' if who else ''}pid={pid}) "
        failure = data.get("is_err") and any("Traceback (most recent call last)" in line for line in lines)
        for line in lines:
            self.file_line(tag + line)
            if line.startswith(PROGRESS):
                try:
                    self.progress(json.loads(line[len(PROGRESS):]))
                except (ValueError, KeyError, TypeError):  # not an event after all: a bar is not worth a failure
                    pass
            elif line.startswith(PREFIX):
                self.show(line)
            elif failure:
                self.show(tag + line, err=True)


    def live_table(self, line: str, rows: list[str]) -> None:
        """On a terminal: ``rows`` redrawn in place of the previous table; elsewhere: ``line``, once."""
        with self.lock:
            if not sys.stdout.isatty():
                print(line, flush=True)
                return
            self._close_bar()
            if self.table_lines:
                sys.stdout.write(f"\x1b[{self.table_lines}F\x1b[J")  # up to the table's first line, clear below
            sys.stdout.write("\n".join(rows) + "\n")
            sys.stdout.flush()
            self.table_lines = len(rows)


CONSOLE = _Console()


def live_table(line: str, rows: list[str]) -> None:
    CONSOLE.live_table(line, rows)


def set_verbose(verbose: bool) -> None:
    CONSOLE.verbose = verbose


def attach(log_dir: str | Path) -> None:
    CONSOLE.attach(log_dir)


def ray_logging_level() -> int:
    """What ``ray.init`` logs on the driver: warnings and errors, or everything when verbose."""
    return logging.INFO if CONSOLE.verbose else logging.WARNING


class _DemoteNotice(logging.Filter):
    """Ray's notice that a new local Ray has token authentication on (its default, kept): an info line for the
    run's log, not a warning on the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and record.getMessage().startswith("Token authentication is enabled"):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def quiet_loggers() -> None:
    """The driver's loggers print warnings and errors only (unless verbose); their handlers on the console stay."""
    if CONSOLE.verbose:
        return
    auth = logging.getLogger(_AUTH_LOGGER)
    if not any(isinstance(f, _DemoteNotice) for f in auth.filters):
        auth.addFilter(_DemoteNotice())
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        for h in logger.handlers:
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stderr, sys.stdout):
                h.setLevel(logging.WARNING)


def quiet_ray() -> None:
    """After ``ray.init``: worker output is filtered by ``CONSOLE`` instead of printed whole by Ray."""
    quiet_loggers()
    if CONSOLE.verbose:
        return
    try:
        from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # another Ray: keep its printer (more lines, nothing lost)
        return
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("raytrain_console", CONSOLE.worker_lines)


def progress(epoch: int, epochs: int, step: int, steps: int, loss: float, examples_per_s: float) -> None:
    """A training worker's progress, as a structured event on its output (which Ray streams to the driver): one line,
    ``PROGRESS`` and a JSON object. The driver's console reads the fields, never the wording of a log message."""
    event = {"epoch": epoch, "epochs": epochs, "step": step, "steps": steps, "loss": round(float(loss), 6),
             "examples_per_s": round(float(examples_per_s), 1)}
    print(PROGRESS + json.dumps(event), flush=True)
