"""The Criteo TSV format: DLRM preprocessing, bad lines named by file and line, synthetic logs, cached prepare."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raytrain.data import prepare
from raytrain.data.criteo import CAT_COLUMNS, INT_COLUMNS, convert_file, read_file
from raytrain.data.criteo_synth import write_day
from raytrain.errors import DataError
from raytrain.spec import parse_spec

SIZES = [1000] * 26


def line(label="1", ints=None, cats=None) -> str:
    ints = ints if ints is not None else [str(i) for i in range(13)]
    cats = cats if cats is not None else [f"{i:08x}" for i in range(26)]
    return "\t".join([label, *ints, *cats])


def rows_of(path, **kw):
    tables = [t for t, _ in read_file(str(path), SIZES, **kw)]
    return [r for t in tables for r in t.to_pylist()]


def test_dlrm_preprocessing_of_one_line(tmp_path):
    ints = ["3", "", "-2", "0"] + ["10"] * 9
    cats = ["68fd1e64", "", "FFFFFFFF", "0000000a"] + ["1"] * 22
    f = tmp_path / "day_0"
    f.write_text(line("1", ints, cats) + "\n" + line("0") + "\n")
    r = rows_of(f)
    assert len(r) == 2 and r[0]["label"] == 1.0 and r[1]["label"] == 0.0
    assert r[0]["int_0"] == pytest.approx(math.log(4))  # log(x + 1)
    assert r[0]["int_1"] == 0.0 and r[0]["int_2"] == 0.0  # missing -> 0, negative clipped to 0
    assert r[0]["cat_0"] == 0x68FD1E64 % 1000 and r[0]["cat_1"] == 0  # hex modulo the table size; missing -> 0
    assert r[0]["cat_2"] == 0xFFFFFFFF % 1000 and r[0]["cat_3"] == 10


def test_gzip_reads_the_same(tmp_path):
    text = "".join(line(str(i % 2), cats=[f"{i * 7919 + j:08x}" for j in range(26)]) + "\n" for i in range(500))
    (tmp_path / "day_0").write_text(text)
    with gzip.open(tmp_path / "day_0.gz", "wt") as fh:
        fh.write(text)
    assert rows_of(tmp_path / "day_0") == rows_of(tmp_path / "day_0.gz")


@pytest.mark.parametrize("bad,message", [
    ("1\t2\t3", "line 3: 3 tab-separated field(s), a Criteo line has 40"),
    (line(cats=["zz00"] + ["1"] * 25), "line 3: cat_0 is not a hex value"),
    (line(ints=["1.5"] + ["1"] * 12), "line 3: int_0 is not an integer"),
    (line(label="2"), "line 3: label is not 0 or 1"),
])
def test_a_bad_line_is_named_by_file_and_line_or_skipped_and_counted(tmp_path, bad, message):
    f = tmp_path / "day_3"
    f.write_text("\n".join([line(), line(), bad, line(), line()]) + "\n")
    with pytest.raises(DataError) as info:
        rows_of(f)
    assert str(info.value) == f"{f}, {message}"
    got = list(read_file(str(f), SIZES, bad_lines="skip"))
    assert sum(t.num_rows for t, _ in got) == 4 and sum(n for _, n in got) == 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(alphabet="0123456789abcdefXYZ-.\t ", max_size=120), min_size=1, max_size=6))
def test_fuzzed_lines_give_rows_or_a_named_error(tmp_path, lines):
    f = tmp_path / "fuzz"
    f.write_text("\n".join(lines) + "\n")
    try:
        rows = rows_of(f)
    except DataError as e:
        assert str(e).startswith(f"{f}")
        return
    for r in rows:  # whatever was accepted is well-formed
        assert r["label"] in (0.0, 1.0)
        assert all(0 <= r[c] < 1000 for c in CAT_COLUMNS) and all(r[c] >= 0 for c in INT_COLUMNS)


def test_synthetic_logs_have_the_format_and_a_learnable_label(tmp_path):
    write_day(tmp_path / "day_0", 60_000, seed=1, day=0)
    first = (tmp_path / "day_0").read_text().split("\n", 1)[0].split("\t")
    assert len(first) == 40 and first[0] in ("0", "1")
    assert all(c == "" or (len(c) == 8 and int(c, 16) >= 0) for c in first[14:])
    stats = convert_file(str(tmp_path / "day_0"), str(tmp_path / "day_0.parquet"), [10**7] * 26)
    assert stats == {"file": str(tmp_path / "day_0"), "rows": 60_000, "skipped": 0}
    t = pq.read_table(tmp_path / "day_0.parquet")
    y = t.column("label").to_numpy()
    assert 0.1 < y.mean() < 0.45
    assert pq.read_metadata(tmp_path / "day_0.parquet").num_row_groups == 1
    c0 = t.column("cat_0").to_numpy()
    _, counts = np.unique(c0, return_counts=True)
    assert np.sort(counts)[::-1][:20].sum() > 0.3 * len(c0)  # power law: a few values take much of the traffic
    # the label depends on the signal features: per-value click rates spread far beyond sampling noise
    rates = [y[c0 == v].mean() for v in np.unique(c0)[:50] if (c0 == v).sum() > 200]
    assert np.std(rates) > 0.05


def test_criteo_source_converts_once_and_reuses_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAYTRAIN_CACHE", str(tmp_path / "cache"))
    for d in range(3):
        write_day(tmp_path / f"day_{d}", 3000, seed=0, day=d)
    doc = {"name": "c", "data": {"source": "criteo", "criteo": {"max_num_embeddings": 5000},
                                "paths": {"train": str(tmp_path / "day_[01]"), "validation": str(tmp_path / "day_2"),
                                          "test": str(tmp_path / "day_2")}}}
    spec = parse_spec(doc)
    a = prepare(spec.data)
    assert [f.cardinality for f in a.schema.sparse] == [min(n, 5000) for n in spec.data.criteo.table_sizes()]
    assert sum(pq.read_metadata(f).num_rows for f in a.paths["train"]) == 6000
    assert "criteo: 6,000 rows from 2 file(s)" in capsys.readouterr().out
    b = prepare(spec.data)
    assert b.paths == a.paths and "criteo:" not in capsys.readouterr().out  # cached: nothing converted again
    (tmp_path / "day_1").write_text((tmp_path / "day_1").read_text() + line() + "\n")  # the input changed
    c = prepare(spec.data)
    assert sum(pq.read_metadata(f).num_rows for f in c.paths["train"]) == 6001
