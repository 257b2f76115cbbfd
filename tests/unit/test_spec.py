"""Job spec validation: every problem at once, with path, bad value, allowed values, did-you-mean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raytrain.errors import SpecError
from raytrain.spec import apply_overrides, load_spec, parse_spec, resolved_yaml

ROOT = Path(__file__).resolve().parents[2]
JOBS = sorted((ROOT / "jobs").glob("*.yaml"))


def _problems(doc: dict) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(doc)
    return info.value.problems


def test_every_job_file_validates():
    assert JOBS, "jobs/ holds no spec"
    for path in JOBS:
        spec = load_spec(path)
        assert spec.name


def test_all_problems_reported_at_once_with_paths_values_and_suggestions():
    doc = {
        "name": "x",
        "model": {"arch": "dcnv2", "embeding_dim": 8},
        "train": {"epochs": 0, "optimizer": {"sparse": "rowwise_adagrd"}},
        "dataa": {},
    }
    assert _problems(doc) == [
        "dataa: unknown key (did you mean 'data'?); allowed keys: abtest, bandit, data, distill, ensemble, kind, model, name, "
        "pipeline, ray, serve, storage, tracking, train, tune",
        "model.arch: 'dcnv2' is not allowed (did you mean 'dcn_v2'?); allowed values: dlrm, dcn_v2, two_tower, sasrec, hstu, "
        "content",
        "model.embeding_dim: unknown key (did you mean 'embedding_dim'?); allowed keys: arch, dcn, dense_arch, dropout, "
        "embedding_dim, embedding_l2, over_arch, sequence, tower",
        "train.epochs: 0: Input should be greater than or equal to 1",
        "train.optimizer.sparse: 'rowwise_adagrd' is not allowed (did you mean 'rowwise_adagrad'?); "
        "allowed values: rowwise_adagrad, adagrad, sgd, adam",
    ]


def test_missing_name_and_wrong_types():
    problems = _problems({"train": {"workers": "two", "batch_size": 10.5}})
    assert "name: required field is missing" in problems
    assert "train.workers: 'two': Input should be a valid integer, unable to parse string as an integer" in problems
    assert "train.batch_size: 10.5: Input should be a valid integer, got a number with a fractional part" in problems


def test_cross_field_checks():
    problems = _problems({
        "name": "x",
        "kind": "serve",
        "train": {"sharding": {"default": "row_wise", "tables": {"item": "table_wise"}}},
    })
    assert problems == [
        "serve: a serve spec needs a 'serve' section (variants, traffic, replicas, batching)",
        "train.sharding.default: 'row_wise' needs train.device: cuda (TorchRec shards row-wise only on CUDA); "
        "on CPU use table_wise, column_wise, table_column_wise or data_parallel",
        "train.sharding.tables.item: no such sparse feature (did you mean 'item_id'?); features: user_id, age, "
        "gender, occupation, zip_prefix, item_id, genres, release_year, user_rated_items",
    ]


def test_row_wise_is_fine_on_cuda():
    spec = parse_spec({"name": "x", "train": {"device": "cuda", "sharding": {"tables": {"item_id": "row_wise"}}}})
    assert spec.train.sharding.tables["item_id"] == "row_wise"


def test_batch_size_must_split_over_workers():
    assert _problems({"name": "x", "train": {"workers": 3, "batch_size": 1024}}) == [
        "train: batch_size 1024 is not divisible by workers 3"
    ]


def test_label_rule_and_split_fractions():
    problems = _problems({"name": "x", "data": {"label": {"column": "rating", "positive_if": "=> 4"},
                                                "split": {"fractions": [0.8, 0.3, 0.1]}}})
    assert problems == [
        "data.label.positive_if: '=> 4': not a rule like '>= 4' (operators: >=, <=, >, <, ==, !=)",
        "data.split.fractions: [0.8, 0.3, 0.1]: fractions must be three positive numbers summing to 1, "
        "got [0.8, 0.3, 0.1]",
    ]


def test_parquet_source_needs_columns_and_one_path_kind():
    problems = _problems({"name": "x", "data": {"source": "parquet"}})
    assert problems == [
        "data: parquet needs exactly one of 'path' (one data set to split) or 'paths'; "
        "parquet needs 'columns' (sparse, multi_valued, dense)"
    ]


def test_overrides_are_typed_and_applied():
    doc = {"name": "x"}
    apply_overrides(doc, ["train.optimizer.lr=0.02", "model.dense_arch=[8, 4]", "data.label.positive_if=>= 3"])
    spec = parse_spec(doc)
    assert spec.train.optimizer.lr == 0.02
    assert spec.model.dense_arch == [8, 4]
    assert spec.data.label.positive_if == ">= 3"
    with pytest.raises(SpecError) as info:
        parse_spec(apply_overrides({"name": "x"}, ["train.epochs=many"]))
    assert info.value.problems == ["train.epochs: 'many': Input should be a valid integer, unable to parse string as an integer"]
    with pytest.raises(SpecError) as info:
        apply_overrides({"name": "x"}, ["train.epochs", "name.sub=1"])
    assert info.value.problems == [
        "override 'train.epochs': expected KEY.PATH=VALUE",
        "override name.sub: 'name' holds a value, not a section",
    ]


def test_resolved_spec_round_trips():
    spec = load_spec(ROOT / "jobs" / "train_ml100k.yaml")
    again = parse_spec(yaml.safe_load(resolved_yaml(spec)))
    assert again == spec


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError) as info:
        load_spec(bad)
    assert str(bad) in str(info.value) and "not valid YAML" in str(info.value)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(SpecError, match="the file is empty"):
        load_spec(empty)


def test_spec_error_pickles():
    import pickle

    err = SpecError(["a: bad", "b: worse"], "spec.yaml")
    again = pickle.loads(pickle.dumps(err))
    assert again.problems == err.problems and str(again) == str(err)


def test_cli_validate_exits_2_on_bad_spec(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {arch: dcnv2}\ntrain: {epochz: 3}\n")
    proc = subprocess.run([sys.executable, "-m", "raytrain.cli.main", "validate", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "2 problems in the job spec" in proc.stderr
    assert "model.arch: 'dcnv2' is not allowed (did you mean 'dcn_v2'?)" in proc.stderr
    assert "train.epochz: unknown key (did you mean 'epochs'?)" in proc.stderr
    good = subprocess.run([sys.executable, "-m", "raytrain.cli.main", "validate", str(ROOT / "jobs/train_ml100k.yaml"),
                           "--print-resolved", "train.epochs=3"], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert yaml.safe_load(good.stdout)["train"]["epochs"] == 3


def _load_or_spec_error(path: Path):
    try:
        return load_spec(path)
    except SpecError as e:
        assert str(e).startswith(f"{path}: ")  # names the file, then the problems
        return None


_yaml_trees = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
        st.sampled_from(["name", "kind", "data", "model", "train", "tune", "source", "arch", "workers", "x"]), kids,
        max_size=4),
    max_leaves=12)


def test_fuzzed_spec_files_give_a_spec_or_a_spec_error(tmp_path):
    path = tmp_path / "fuzz.yaml"

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode)
           | _yaml_trees.map(lambda t: yaml.safe_dump(t).encode()))
    def check(raw: bytes) -> None:
        path.write_bytes(raw)
        _load_or_spec_error(path)  # anything else (a traceback) fails the test

    check()


def test_a_binary_spec_file_exits_2_with_a_message(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"\x00\xff\xfe binary")
    proc = subprocess.run([sys.executable, "-m", "raytrain.cli.main", "validate", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{path}: 1 problem in the job spec:" in proc.stderr
    assert "not a text (UTF-8) file: byte 0xff at offset 1" in proc.stderr


def test_fuzzed_overrides_give_a_spec_or_a_spec_error():
    """Random KEY.PATH=VALUE overrides of a real job: known and unknown keys, any YAML-ish value."""
    keys = st.sampled_from(["train.epochs", "train.optimizer.lr", "model.dense_arch", "data.split", "storage",
                            "serve", "tune.space", "train", "name", "model.arch", "data.label.positive_if",
                            "train.resources_per_worker.cpu", "ray.num_cpus", "x.y.z", "train.epochs.sub", ""])
    values = st.text(max_size=30) | st.sampled_from(["[1, 2", "{a: 1}", "null", "-1", "1e999", "[[[[[[]]]]]]", "&a *a",
                                                     "s3://k:s@b/p?secret_key=x", "!!python/object:os.system"])
    spec_file = ROOT / "jobs/train_ml100k.yaml"

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(st.lists(st.tuples(keys, values).map(lambda kv: f"{kv[0]}={kv[1]}") | st.text(max_size=20), max_size=4))
    def check(overrides: list[str]) -> None:
        try:
            load_spec(spec_file, overrides)
        except SpecError as e:
            assert str(e)

    check()


def test_prefetch_depth_defaults_to_inline_building_on_multi_threaded_cpu_workers():
    def depth(**train):
        return parse_spec({"name": "p", "data": {"source": "synthetic"}, "train": train}).train.prefetch_depth()

    assert depth() == 4
    assert depth(threads_per_worker=1) == 4
    assert depth(threads_per_worker=2) == 0
    assert depth(threads_per_worker=2, device="cuda", resources_per_worker={"gpu": 1}) == 4
    assert depth(threads_per_worker=2, ingest={"prefetch_batches": 3}) == 3
    assert depth(ingest={"prefetch_batches": 0}) == 0


def test_sequential_specs_refuse_the_train_settings_their_loop_would_ignore():
    """A SASRec / HSTU run trains on CPU workers without TorchRec's train pipeline and without its own warm start:
    a spec asking for any of them is refused by name (exit 2), never run without it."""
    from raytrain.errors import SpecError

    with pytest.raises(SpecError) as e:
        load_spec(ROOT / "jobs/pretrain_hstu_ml100k.yaml", [
            "train.device=cuda", "train.pipeline=sparse_dist", "train.init_from={run: runs/x}"])
    problems = "\n".join(e.value.problems)
    for words in ("train.device: hstu trains on CPU workers", "train.pipeline: hstu's loop has no TorchRec train "
                  "pipeline", "train.init_from: hstu runs do not warm-start"):
        assert words in problems, problems
    assert e.value.exit_code == 2
    load_spec(ROOT / "jobs/pretrain_hstu_ml100k.yaml", ["train.pipeline=auto"])  # the default stays valid


def test_a_cuda_run_on_a_machine_without_gpus_is_refused_before_anything_starts(tmp_path, capsys):
    """An embedded Ray has this machine's GPUs only: exit 2 naming what is missing, no run directory, no Ray."""
    import torch

    from raytrain.cli.main import main

    if torch.cuda.is_available():
        pytest.skip("this machine has GPUs")
    code = main(["run", str(ROOT / "jobs/train_ml100k.yaml"), "train.device=cuda", f"storage={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "train.device cuda: 2 workers need 2 GPUs, this machine has 0" in err
    assert list(tmp_path.iterdir()) == []
