"""`raytrain plan` prints a sharding plan for a cluster that does not exist, from this CPU machine."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIG = "data.synthetic.cardinality=[4000000000,500000000,100000000,100000,50000,10000,10000,5000,1000,1000,100,10]"


def _plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raytrain.cli.main", "plan", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def _rows(stdout: str) -> dict[str, list[str]]:
    return {m.group(1): m.group(2).split() for m in re.finditer(r"^(t_\w+)\s+(.*)$", stdout, re.M)}


def test_plan_for_64_gpus_with_billion_row_tables_and_row_wise_sharding():
    proc = _plan("jobs/train_synthetic.yaml", "--world-size", "64", "--device", "cuda", "--hbm-gb", "80", BIG,
                 "train.sharding.tables.s0=row_wise", "train.sharding.tables.s4=table_row_wise")
    assert proc.returncode == 0, proc.stderr
    rows = _rows(proc.stdout)
    assert proc.stdout.startswith("plan for train-synthetic: 64 x cuda (hbm 80.0 GiB)")
    assert rows["t_s0"] == ["4,000,000,000", "16", "row_wise", "fused", "0-63"]
    assert rows["t_s1"][2] == "table_wise" and len(rows["t_s1"][4].split(",")) == 1
    assert rows["t_s4"][2] == "table_row_wise"
    assert rows["t_s9"][2:] == ["data_parallel", "dense", "0-63"]
    assert len(rows) == 12
    # 4e9 rows x 16 dims x 4 bytes + row-wise Adagrad state, spread over 64 ranks: ~3.7 GiB each for t_s0
    assert "64 ranks: min" in proc.stdout
    low = float(re.search(r"min ([\d.]+) GiB", proc.stdout).group(1))
    assert 3.5 < low < 40


def test_plan_that_cannot_fit_is_a_clear_error():
    proc = _plan("jobs/train_synthetic.yaml", "--world-size", "64", "--device", "cuda", "--hbm-gb", "80", BIG)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: PlanError: no sharding plan fits 64 x cuda ranks (hbm 80 GiB")
    assert "table t_s0" in proc.stderr


def test_cpu_plan_honours_pinned_sharding_types():
    proc = _plan("jobs/train_synthetic.yaml", "--world-size", "2", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    rows = _rows(proc.stdout)
    assert rows["t_s0"][2] == "column_wise"
    assert rows["t_s2"][2] == "table_column_wise"
    assert rows["t_s10"][2:] == ["data_parallel", "dense", "0,1"]
    assert all(r[2] in {"table_wise", "column_wise", "table_column_wise", "data_parallel"} for r in rows.values())


def test_row_wise_on_cpu_is_refused_before_planning():
    proc = _plan("jobs/train_synthetic.yaml", "--world-size", "2", "--device", "cpu", "train.sharding.tables.s0=row_wise")
    assert proc.returncode == 2
    assert "train.sharding.tables.s0: 'row_wise' needs train.device: cuda" in proc.stderr


def _estimate(stdout: str) -> tuple[float, float]:
    m = re.search(r"estimated embedding step .*?: ([\d.]+) ms on the slowest of \d+ ranks .*?-> ([\d,]+) samples/s per "
                  r"device", stdout)
    assert m, stdout
    return float(m.group(1)), float(m.group(2).replace(",", ""))


def test_plan_of_the_mlperf_configuration_prints_the_cost_models_estimate():
    proc = _plan("jobs/mlperf_dlrm_dcnv2.yaml", "--world-size", "8", "--device", "cuda", "--gpu", "h100-80gb")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("plan for mlperf-dlrm-dcnv2: 8 x cuda (h100-80gb)")
    rows = _rows(proc.stdout)
    assert len(rows) == 26 and rows["t_cat_0"][:2] == ["40,000,000", "128"]
    step_ms, per_device = _estimate(proc.stdout)
    assert "batch 8,192 per rank" in proc.stdout  # the global batch 65,536 over 8 ranks
    assert abs(per_device - 8192 / (step_ms / 1000)) / per_device < 0.01
    # one lookup per sample instead of MLPerf's 214: the cost model's step gets cheaper
    one_hot = _plan("jobs/mlperf_dlrm_dcnv2.yaml", "--world-size", "8", "--device", "cuda", "--gpu", "h100-80gb",
                    "train.sharding.pooling_factors={}")
    assert _estimate(one_hot.stdout)[0] < step_ms


def test_small_auto_tables_are_replicated_on_cpu_and_pinned_tables_keep_their_type():
    from raytrain.data.schema import FeatureSchema, SparseFeature
    from raytrain.sharding.planner import build_constraints
    from raytrain.spec.training import ShardingSpec

    # dim 64: 4,000 rows are 0.98 MiB (under the CPU default of 1 MiB), 5,000 rows 1.22 MiB
    schema = FeatureSchema(tuple(SparseFeature(n, rows, False, "context") for n, rows in
                                 (("small", 4000), ("big", 5000), ("pinned", 10))), (), "label")

    def types(device: str, **kw) -> dict:
        spec = ShardingSpec(tables={"pinned": "table_wise"}, **kw)
        return {t: c.sharding_types for t, c in build_constraints(schema, spec, 64, device).items()}

    assert types("cpu") == {"t_small": ["data_parallel"], "t_pinned": ["table_wise"]}  # t_big: the planner's
    assert types("cuda") == {"t_pinned": ["table_wise"]}  # on CUDA the planner decides
    assert types("cpu", replicate_below_mib=0) == {"t_pinned": ["table_wise"]}
    assert types("cuda", replicate_below_mib=2) == {"t_small": ["data_parallel"], "t_big": ["data_parallel"],
                                                     "t_pinned": ["table_wise"]}
    small = build_constraints(schema, ShardingSpec(), 64, "cpu")["t_small"]
    assert small.compute_kernels == ["dense"]  # the kernel data_parallel needs


def test_the_demo_job_replicates_its_tables_on_cpu():
    proc = _plan("jobs/train_ml100k.yaml", "--world-size", "2", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    rows = _rows(proc.stdout)
    assert len(rows) == 9 and all(r[2:4] == ["data_parallel", "dense"] for r in rows.values()), proc.stdout
