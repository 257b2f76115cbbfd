"""raytrain's loggers: one hierarchy under ``raytrain`` (``raytrain.train.loop``, ``raytrain.serve.runner``, ...),
each module's ``log = get_logger(__name__)``.

Its one handler prints ``[raytrain] message`` to the process's current standard output, as raytrain has always
printed: in a Ray worker those lines are what the console keeps (raytrain.console) and files the rest. Warnings
read ``[raytrain] warning: ...``. The hierarchy does not propagate to the root logger, so Ray's and other
libraries' handlers never print raytrain's lines twice; a user can still add handlers (a file, JSON) to
``logging.getLogger("raytrain")``.
"""

from __future__ import annotations

import logging
import sys

ROOT = "raytrain"


class _Stdout(logging.StreamHandler):
    """A handler writing to whatever ``sys.stdout`` is when a line is logged (test capture, redirection)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout  # not setStream: it would flush the previous stream, which may be closed by now
        super().emit(record)


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        return f"[raytrain] {text}"


def _configure() -> logging.Logger:
    root = logging.getLogger(ROOT)
    if not any(isinstance(h, _Stdout) for h in root.handlers):
        handler = _Stdout()
        handler.setFormatter(_Format())
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return root


def get_logger(name: str) -> logging.Logger:
    """The logger of a module (``__name__``) in raytrain's hierarchy."""
    _configure()
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}")
