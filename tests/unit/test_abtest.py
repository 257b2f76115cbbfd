"""A/B analysis on simulated traffic with a known lift: intervals cover it, the sample-ratio check flags an induced
mismatch and passes a sound split, CUPED narrows the interval, and kind abtest reads a serve run's logs."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raytrain.abtest import analyze, per_user, srm_test
from raytrain.abtest.simulate import traffic as _traffic
from raytrain.errors import SpecError
from raytrain.spec import parse_spec


def test_the_known_lift_is_inside_the_interval_and_a_sound_split_passes():
    requests, feedback = _traffic()
    report = analyze(requests, feedback, {"a": 0.5, "b": 0.5})
    a, b = report["variants"]["a"], report["variants"]["b"]
    assert a["users"] + b["users"] == 20_000 and a["ctr_ci"][0] < 0.10 < a["ctr_ci"][1]
    assert b["ctr_ci"][0] < 0.12 < b["ctr_ci"][1]
    cmp = report["comparisons"]["b"]
    assert cmp["rel_ci"][0] < 0.20 < cmp["rel_ci"][1] and cmp["rel_ci"][0] > 0.05  # the 20% lift, clearly above 0
    assert cmp["abs_ci"][0] < 0.02 < cmp["abs_ci"][1] and cmp["p_value"] < 1e-6
    assert not report["srm"]["flagged"] and report["srm"]["p_value"] > 0.001
    # no effect (an A/A test): the interval holds 0
    requests, feedback = _traffic(ctr=(0.10, 0.10), seed=1)
    same = analyze(requests, feedback, {"a": 0.5, "b": 0.5})["comparisons"]["b"]
    assert same["abs_ci"][0] < 0 < same["abs_ci"][1]


def test_a_lost_share_of_one_variants_users_is_flagged_as_a_sample_ratio_mismatch():
    requests, feedback = _traffic(drop_b=0.08)
    srm = analyze(requests, feedback, {"a": 0.5, "b": 0.5})["srm"]
    assert srm["flagged"] and srm["p_value"] < 1e-6
    assert srm_test({"a": 9000, "b": 1000}, {"a": 0.9, "b": 0.1})["p_value"] == pytest.approx(1.0)


def test_delta_method_interval_covers_the_truth_at_its_level():
    """Over 60 simulated A/A experiments the 95% interval of b's CTR misses its true mean in few of them."""
    misses = 0
    for seed in range(60):
        requests, feedback = _traffic(users=2000, ctr=(0.10, 0.10), seed=100 + seed)
        lo, hi = analyze(requests, feedback, {"a": 0.5, "b": 0.5})["comparisons"]["b"]["abs_ci"]
        misses += not (lo < 0 < hi)
    assert misses <= 8  # 3 expected; binomial(60, 0.05) exceeds 8 with probability < 0.5%


def test_cuped_with_a_pre_period_narrows_the_interval_without_moving_the_lift():
    requests, feedback = _traffic(pre_period=True, seed=3)
    report = analyze(requests, feedback, {"a": 0.5, "b": 0.5}, pre_period_end=1000.0)
    plain, cuped = report["comparisons"]["b"], report["comparisons"]["b"]["cuped"]
    # the reduction is the squared correlation of a user's pre-period and experiment CTR: here about 0.45^2 (users'
    # own propensities vary with sd 0.065 around 0.10, and 17 impressions a user add binomial noise of sd 0.07)
    assert 0.1 < report["cuped"]["variance_reduction"] < 0.3
    assert cuped["abs_ci"][1] - cuped["abs_ci"][0] < 0.95 * (plain["abs_ci"][1] - plain["abs_ci"][0])
    assert cuped["abs_ci"][0] < 0.02 < cuped["abs_ci"][1]
    assert abs(cuped["abs_lift"] - plain["abs_lift"]) < 0.005


def test_per_user_counts_clicks_once_per_shown_item():
    requests = pd.DataFrame([{"request_id": "r1", "variant": "a", "user": "1", "items": [1, 2, 3]},
                             {"request_id": "r2", "variant": "a", "user": "1", "items": [4]},
                             {"request_id": "r3", "variant": "b", "user": "2", "items": [1]}])
    feedback = pd.DataFrame([{"request_id": "r1", "item": 2, "reward": 1.0},
                             {"request_id": "r3", "item": 9, "reward": 1.0}])  # item 9 was never shown
    out = per_user(requests, feedback).set_index("user")
    assert out.loc["1", "impressions"] == 4 and out.loc["1", "clicks"] == 1.0
    assert out.loc["2", "impressions"] == 1 and out.loc["2", "clicks"] == 0.0


def _write(folder, rows, schema):
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "part-1-a.parquet")


def test_kind_abtest_reads_a_serve_runs_logs_and_writes_its_report(tmp_path, capsys):
    from raytrain.abtest import run_abtest
    from raytrain.serve.decisions import FEEDBACK_SCHEMA, REQUEST_SCHEMA

    serve_run = tmp_path / "serve" / "20260101-000000"
    serve_run.mkdir(parents=True)
    (serve_run / "serve.json").write_text(json.dumps({"variants": {"a": {"share": 0.5}, "b": {"share": 0.5}}}))
    requests, feedback = _traffic(users=4000, seed=5)
    forced = requests.iloc[:50].assign(forced=True, request_id=lambda d: d["request_id"] + "-f", variant="b")
    _write(serve_run / "logs" / "requests", pd.concat([requests, forced]).to_dict("records"), REQUEST_SCHEMA)
    _write(serve_run / "logs" / "feedback", feedback.to_dict("records"), FEEDBACK_SCHEMA)
    spec = parse_spec({"name": "ab", "kind": "abtest", "storage": str(tmp_path / "runs"),
                       "abtest": {"serve_run": str(tmp_path / "serve")}})
    report = run_abtest(spec)
    assert report["forced_requests"] == 50 and report["forced_left_out"]
    assert report["variants"]["a"]["requests"] + report["variants"]["b"]["requests"] == len(requests)
    out = capsys.readouterr().out
    assert "b vs a: lift" in out and "sample ratio:" in out
    run = tmp_path / "runs" / "ab"
    (done,) = list(run.iterdir())
    assert json.loads((done / "report.json").read_text())["control"] == "a"
    assert (done / "ctr.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SpecError, match="abtest: an abtest spec needs an 'abtest' section"):
        parse_spec({"name": "ab", "kind": "abtest"})
    with pytest.raises(SpecError, match="abtest: only for kind abtest"):
        parse_spec({"name": "ab", "kind": "train", "abtest": {"serve_run": "x"}})
