"""The README and docs/ show only commands the CLI has: every `raytrain ...` line of their code blocks parses with
the real argument parser (subcommand, options and their values), every spec it names exists and validates with the
command's overrides, and every jobs/ spec a page names exists."""

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


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_raytrain_command_in_the_readme_and_docs_exists_and_its_spec_validates():
    from raytrain.spec import load_spec

    commands = {page.name: _commands(page.read_text()) for page in PAGES}
    assert len(commands["README.md"]) >= 20, commands["README.md"]
    parser = build_parser()
    validated = 0
    for page, found in commands.items():
        for command in found:
            tokens = [re.sub(r"^\[(.*)\]$", r"\1", t) for t in shlex.split(command)[1:]]  # "[--follow]" -> "--follow"
            rest, overrides = split_overrides(tokens)
            try:
                args = parser.parse_args(rest)
            except SystemExit:
                raise AssertionError(f"{page} shows a command the CLI does not take: {command}") from None
            spec = getattr(args, "spec", None)
            if isinstance(spec, str) and spec.startswith("jobs/"):
                assert (ROOT / spec).exists(), f"{page}: {command}: no {spec}"
                load_spec(ROOT / spec, [o for o in overrides if "<" not in o])  # raises naming every problem
                validated += 1
    assert validated >= 20


def test_every_job_spec_a_page_names_exists():
    for page in [*PAGES, ROOT / "cluster" / "README.md"]:
        for name in set(re.findall(r"jobs/[\w.-]+\.yaml", page.read_text())):
            assert (ROOT / name).exists(), f"{page.name} names {name}, which does not exist"
