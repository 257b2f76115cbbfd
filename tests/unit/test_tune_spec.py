"""The tune section: search spaces are checked entry by entry before anything runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from raytrain.errors import SpecError
from raytrain.spec import load_spec, parse_spec
from raytrain.spec.tune_space import apply_config, parse_dist

ROOT = Path(__file__).resolve().parents[2]


def _problems(space: dict, **tune) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "t", "kind": "tune", "tune": {"space": space, **tune}})
    return info.value.problems


def test_bad_space_entries_name_the_entry():
    problems = _problems({
        "train.optimizer.lr": "loguniform(0, 1)",
        "model.embedding_dim": "choice([8, -1])",
        "train.optimzer.lr": "uniform(0.1, 0.2)",
        "train.epochs": "randint(3, 3)",
        "model.arch": 'choice(["dlrm", "dcn"])',
        "x": "normal(0, 1)",
        "train.batch_size": "randint(1.5, 4)",
        "model.dense_arch": "choice([])",
    })
    assert problems == [
        "tune.space.train.optimizer.lr: loguniform needs a positive lower bound, got 0",
        "tune.space.model.embedding_dim: value -1 gives an invalid spec: model.embedding_dim: -1: "
        "Input should be greater than or equal to 1",
        "tune.space.train.optimzer.lr: value 0.1 gives an invalid spec: train.optimzer: unknown key "
        "(did you mean 'optimizer'?); allowed keys: allreduce, audit_examples, batch_size, checkpoint, "
        "collective_timeout_s, cross_validation, device, epochs, eval_batch_size, id_dropout, ingest, init_from, "
        "lr_decay, max_failures, optimizer, pipeline, resources_per_worker, sampled_softmax, seed, sharding, "
        "start_timeout_s, threads_per_worker, workers",
        "tune.space.train.epochs: empty range: 3 >= 3",
        "tune.space.model.arch: value 'dcn' gives an invalid spec: model.arch: 'dcn' is not allowed "
        "(did you mean 'dcn_v2'?); allowed values: dlrm, dcn_v2, two_tower, sasrec, hstu, content",
        "tune.space.x: 'normal(0, 1)' is not a distribution; use one of: uniform(...), loguniform(...), "
        "quniform(...), randint(...), choice(...), grid(...)",
        "tune.space.train.batch_size: randint needs integers, got [1.5, 4]",
        "tune.space.model.dense_arch: choice needs a non-empty list, got []",
    ]


def test_search_and_scheduler_fields_and_warm_start_keys():
    assert _problems({"train.optimizer.lr": "grid([0.1, 0.2])"}) == [
        "tune.space.train.optimizer.lr: grid(...) needs search.algorithm: grid (use choice(...) otherwise)"
    ]
    assert _problems({"train.optimizer.lr": "uniform(0.1, 0.2)"},
                     search={"algorithm": "optuna_tpe", "points_to_evaluate": [{"train.optimizer.sparse_lr": 1}]}) == [
        "tune.search.points_to_evaluate[0]: keys not in tune.space: train.optimizer.sparse_lr"
    ]
    assert _problems({"train.optimizer.lr": "uniform(0.1, 0.2)"}, scheduler={"name": "ashaa"}) == [
        "tune.scheduler.name: 'ashaa' is not allowed (did you mean 'asha'?); allowed values: fifo, asha, hyperband, "
        "median_stopping, pbt"
    ]
    assert _problems({"train.optimizer.lr": "uniform(0.1, 0.2)"},
                     search={"algorithm": "optuna_tpe"}, scheduler={"name": "pbt"}) == [
        "tune.search.algorithm: pbt explores by itself; use random (or grid) with it, not optuna_tpe"
    ]
    assert _problems({}) == ["tune.space: empty; name at least one spec path to search, e.g. train.optimizer.lr"]
    with pytest.raises(SpecError, match="tune: a tune spec needs a 'tune' section"):
        parse_spec({"name": "t", "kind": "tune"})


def test_distributions_and_trial_specs():
    assert parse_dist("quniform(1, 10, 2)").extremes() == [1, 10]
    assert parse_dist("randint(2, 5)").extremes() == [2, 4]
    spec = parse_spec({"name": "t", "kind": "tune", "tune": {"space": {"model.embedding_dim": "choice([8, 16])"}}})
    doc = apply_config(spec.model_dump(mode="json"), {"model.embedding_dim": 8, "train.sharding.tables.item_id": "table_wise"})
    trial = parse_spec(doc)
    assert trial.kind == "train" and trial.tune is None
    assert trial.model.embedding_dim == 8 and trial.train.sharding.tables == {"item_id": "table_wise"}


def test_tune_over_a_sequential_model_needs_a_ranking_metric():
    spec = load_spec(ROOT / "jobs/tune_hstu_ml100k.yaml")
    assert spec.tune.metric == "val_ndcg@10"
    for override, message in (("tune.metric=val_auc", "tune.metric: hstu reports val_ndcg@10"),
                              ("tune.mode=min", "tune.mode: val_ndcg@10 is better when higher"),
                              ("tune.scheduler={name: pbt}", "pbt is not available for hstu")):
        with pytest.raises(SpecError, match=re.escape(message)):
            load_spec(ROOT / "jobs/tune_hstu_ml100k.yaml", [override])
    with pytest.raises(SpecError, match="runs as kind train .pretraining., tune or distill"):
        load_spec(ROOT / "jobs/pretrain_hstu_ml100k.yaml", ["kind=ensemble", "ensemble={tune_run: x}"])
