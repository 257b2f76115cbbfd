"""The README shows only commands the CLI has: every `raytrain ...` line of its code blocks parses with the real
argument parser (subcommand, options and their values)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from raytrain.cli.main import build_parser, split_overrides

ROOT = Path(__file__).resolve().parents[2]


def _commands(text: str) -> list[str]:
    out, in_block, pending = [], False, ""
    for line in text.splitlines():
        if line.startswith("```"):
            in_block = not in_block
            continue
        if not in_block:
            continue
        line = pending + re.split(r"\s#\s", line)[0].strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        out += [part.strip() for part in line.split(" | ") if part.strip().startswith("raytrain ")]
    return out


def test_every_raytrain_command_in_the_readme_exists():
    commands = _commands((ROOT / "README.md").read_text())
    assert len(commands) >= 20, commands
    parser = build_parser()
    for command in commands:
        tokens = [re.sub(r"^\[(.*)\]$", r"\1", t) for t in shlex.split(command)[1:]]  # "[--follow]" -> "--follow"
        rest, _ = split_overrides(tokens)
        try:
            parser.parse_args(rest)
        except SystemExit:
            raise AssertionError(f"README shows a command the CLI does not take: {command}") from None
