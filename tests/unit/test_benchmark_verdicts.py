"""The helpers that turn benchmark measurements into GOAL verdicts: they must be able to say missed."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_a_paired_gain_is_met_only_when_its_confidence_bound_clears_zero():
    from common.paired import paired_lower_bound
    from scipy import stats

    a, b = [0.790, 0.795, 0.788], [0.780, 0.786, 0.781]
    mean, low = paired_lower_bound(a, b)
    d = [x - y for x, y in zip(a, b)]
    ci = stats.ttest_rel(a, b, alternative="greater").confidence_interval(0.95)  # scipy's own paired t-test
    assert mean == pytest.approx(sum(d) / 3) and low == pytest.approx(ci.low) and low > 0
    # the same mean gain, but noisy: a difference noise could make is missed
    noisy = [0.80, 0.77, 0.80]
    mean, low = paired_lower_bound(noisy, b)
    assert mean > 0 and low <= 0  # missed
    assert paired_lower_bound([0.8], [0.7]) == (pytest.approx(0.1), -math.inf)  # one seed: never met
    with pytest.raises(ValueError, match="paired samples"):
        paired_lower_bound([0.1, 0.2], [0.1])


def test_report_replaces_the_rows_of_the_goals_a_log_has(tmp_path, monkeypatch):
    import report

    page = tmp_path / "benchmarks.md"
    monkeypatch.setattr(report, "PAGE", page)
    log = tmp_path / "a.log"
    log.write_text("noise\nGOAL one 1.0 >=1 met\nGOAL two 0.5 >=1 missed\n")
    monkeypatch.setattr(sys, "argv", ["report.py", "python benchmarks/x.py", str(log)])
    report.main()
    page.write_text(page.read_text() + "\n## Notes\n\nwhy two is missed\n")
    log.write_text("GOAL two 1.5 >=1 met (mean of 3 seeds, std 0.1)\n")  # a run of one section: only its goal changes
    monkeypatch.setattr(sys, "argv", ["report.py", "python benchmarks/x.py --sections b", str(log)])
    report.main()
    rows = [line for line in page.read_text().splitlines() if line.startswith("| one") or line.startswith("| two")]
    assert len(rows) == 2 and "| one | 1.0 | >=1 | met |" in rows[0]
    assert "| two | 1.5 (mean of 3 seeds, std 0.1) | >=1 | met |" in rows[1]
    assert page.read_text().endswith("## Notes\n\nwhy two is missed\n")
    log.write_text("no goals here\n")
    with pytest.raises(SystemExit, match="no GOAL lines"):
        report.main()


def _raytrain_names(node) -> set[str]:
    """Every raytrain module a piece of code imports, and every name it reads from one."""
    import ast

    found = set()
    for n in ast.walk(node):
        if isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "raytrain":
            found.add(n.module)
        elif isinstance(n, ast.Import):
            found |= {a.name for a in n.names if a.name.split(".")[0] == "raytrain"}
        elif isinstance(n, ast.Constant) and isinstance(n.value, str):  # a script run in a subprocess
            found |= set(re.findall(r"^\s*(?:from|import) (raytrain[\w.]*)", n.value, re.MULTILINE))
    return found


def test_the_hand_written_baselines_import_nothing_from_raytrain():
    """A baseline built from the code under test measures that code against itself: the hand-written arms of
    train_overhead.py, compute_limit.py and startup.py use TorchRec and numpy only (raytrain may prepare the data
    file they read, outside the arm)."""
    import ast

    assert _raytrain_names(ast.parse((ROOT / "benchmarks/common/handbuilt.py").read_text())) == set()
    arms = {"compute_limit.py": {"PlainDCN", "FusedTablesDCN", "_tbe_inputs", "limit_rate", "dmp_rate"},
            "train_overhead.py": {"run_handwritten"}, "startup.py": {"hand_written", "HAND"}}
    for file, names in arms.items():
        tree = ast.parse((ROOT / "benchmarks" / file).read_text())
        defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        defs |= {t.id: n for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        assert names <= set(defs), (file, names - set(defs))
        for name in names:
            assert _raytrain_names(defs[name]) == set(), f"{file}: {name} uses raytrain"
    # the check itself can fail: a function that imports raytrain is caught
    assert _raytrain_names(ast.parse("def f():\n    from raytrain.data.batches import Columns\n")) == {"raytrain.data.batches"}
    assert _raytrain_names(ast.parse('S = """\nimport raytrain.spec\n"""')) == {"raytrain.spec"}
