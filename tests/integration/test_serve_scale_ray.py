"""Serving at scale on real Ray Serve over HTTP: a two-tower model with int8 tables retrieving from its catalogue index
(exact and IVF), a two-stage variant, and a Criteo-format DLRM answering rows of raw log values."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import _free_port
from test_serve_ray import post

from raytrain.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _metadata(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url + "/metadata", timeout=60).read())


@pytest.fixture(scope="module")
def serve_port(ray_local):
    """Serve started afresh on a port of this module's (Serve keeps the HTTP port it first started with)."""
    from ray import serve

    serve.shutdown()
    yield _free_port()
    serve.shutdown()


@pytest.fixture(scope="module")
def two_tower_served(two_tower_summary, pipeline_out, serve_port, tmp_path_factory):
    from ray import serve

    from raytrain.serve.runner import deploy

    two_tower_run = two_tower_summary["run_dir"]
    spec = parse_spec({"name": "serve-scale", "kind": "serve", "storage": str(tmp_path_factory.mktemp("serve-scale")),
                       "serve": {
                           "variants": {
                               "exact": {"run": two_tower_run, "quantize": "int8", "quantize_tables": {"genres": "fp16"},
                                         "retrieval": {"index": "exact"}},
                               "ivf": {"run": two_tower_run, "retrieval": {"index": "ivf", "nlist": 16, "nprobe": 16}},
                               "ranked": {"distill": pipeline_out["steps"]["distill"]["run_dir"], "retrieve_from": "exact",
                                          "retrieve_k": 50}},
                           "traffic": {"exact": 1.0, "ivf": 0.0, "ranked": 0.0}, "force_variant": "header",
                           "port": serve_port, "request_log": False}})
    out = deploy(spec)
    yield spec, out
    serve.delete(spec.name)


def test_a_quantized_two_tower_retrieves_what_its_own_scores_rank_first(two_tower_served):
    spec, out = two_tower_served
    url = out["url"]
    meta = _metadata(url)
    exact = next(m for m in meta["models"] if m["quantize"] == "int8")
    assert exact["retrieval"]["index"] == "exact" and exact["retrieval"]["items"] == 1682
    tables = exact["tables"]
    assert tables["t_item_id"]["dtype"] == "int8" and tables["t_genres"]["dtype"] == "fp16"
    fp32 = next(m for m in meta["models"] if m["quantize"] == "none")
    assert fp32["tables"]["t_item_id"]["dtype"] == "fp32"
    # int8 rows: D + 4 bytes against 4 D
    d = fp32["tables"]["t_item_id"]["dim"]
    ratio = tables["t_item_id"]["bytes"] / fp32["tables"]["t_item_id"]["bytes"]
    assert abs(ratio - (d + 4) / (4 * d)) < 0.01 and exact["table_bytes"] < 0.4 * fp32["table_bytes"]

    status, rec = post(url + "/recommend", {"user_id": 12, "k": 10}, variant="exact")
    assert status == 200 and len(rec["items"]) == 10, rec
    # a body sent as a form's (curl -d, urllib's default content type) is read as JSON all the same
    plain = urllib.request.Request(url + "/predict", data=b'{"rows": [{"user_id": 12, "item_id": 50}]}',
                                   headers={"X-Raytrain-Variant": "exact"})
    with urllib.request.urlopen(plain, timeout=60) as r:
        assert r.status == 200 and len(json.loads(r.read())["probabilities"]) == 1
    scores = [x["score"] for x in rec["items"]]
    assert scores == sorted(scores, reverse=True)
    # the retrieved items' scores are the model's own /predict probabilities of those (user, item) rows ...
    status, check = post(url + "/predict", {"rows": [{"user_id": 12, "item_id": x["item_id"]} for x in rec["items"]]},
                         variant="exact")
    assert status == 200
    np.testing.assert_allclose(check["probabilities"], scores, rtol=0, atol=1e-5)
    # ... and they are the top 10 of scoring every item the user has not rated, row by row (the path without an index)
    status, everything = post(url + "/recommend", {"user_id": 12, "k": 100, "candidates": list(range(1, 1683))},
                              variant="exact")
    assert status == 200
    assert [x["item_id"] for x in everything["items"][:10]] == [x["item_id"] for x in rec["items"]]


def test_an_ivf_index_recalls_the_exact_ranking_and_a_two_stage_variant_ranks_what_was_retrieved(two_tower_served):
    spec, out = two_tower_served
    url = out["url"]
    meta = _metadata(url)
    ivf = next(m for m in meta["models"] if m.get("retrieval", {}).get("index") == "ivf")
    assert ivf["retrieval"]["nlist"] == 16
    recalls = []
    for user in (1, 12, 100, 400, 900):
        _, a = post(url + "/recommend", {"user_id": user, "k": 20}, variant="ivf")
        status, b = post(url + "/recommend", {"user_id": user, "k": 20, "candidates": list(range(1, 1683))},
                         variant="ivf")
        assert status == 200
        truth = {x["item_id"] for x in b["items"]}
        recalls.append(len(truth & {x["item_id"] for x in a["items"]}) / 20)
    assert np.mean(recalls) >= 0.9, recalls  # 16 of 16 lists probed: exact but for float rounding
    # two stages: the two-tower retrieves 50, the distilled DCN-v2 student ranks them (scores: its /predict probabilities)
    status, rec = post(url + "/recommend", {"user_id": 12, "k": 5}, variant="ranked")
    assert status == 200 and rec["variant"] == "ranked" and len(rec["items"]) == 5
    _, retrieved = post(url + "/recommend", {"user_id": 12, "k": 50}, variant="exact")
    assert {x["item_id"] for x in rec["items"]} <= {x["item_id"] for x in retrieved["items"]}
    _, check = post(url + "/predict", {"rows": [{"user_id": 12, "item_id": x["item_id"]} for x in rec["items"]]},
                    variant="ranked")
    np.testing.assert_allclose(check["probabilities"], [x["score"] for x in rec["items"]], rtol=0, atol=1e-6)
    _, all50 = post(url + "/predict", {"rows": [{"user_id": 12, "item_id": x["item_id"]} for x in retrieved["items"]]},
                    variant="ranked")
    assert max(all50["probabilities"]) == pytest.approx(rec["items"][0]["score"], abs=1e-6)


@pytest.fixture(scope="module")
def criteo_run(ray_local, tmp_path_factory):
    from raytrain.data.criteo_synth import write_day
    from raytrain.train.runner import run_train

    logs = tmp_path_factory.mktemp("criteo-logs")
    for day in range(3):
        write_day(logs / f"day_{day}", 3000, seed=day, day=day)
    spec = load_spec(ROOT / "jobs/train_criteo_synth.yaml", [
        f"storage={tmp_path_factory.mktemp('criteo-runs')}", "train.workers=1", "train.batch_size=512",
        "train.eval_batch_size=2048", "data.criteo.max_num_embeddings=5000",
        f"data.paths={{train: '{logs}/day_0', validation: '{logs}/day_1', test: '{logs}/day_2'}}",
        "train.checkpoint={every_epochs: 1, keep: 1}"])
    return run_train(spec)["run_dir"], logs / "day_2"


def test_a_criteo_model_answers_rows_of_raw_log_values_and_refuses_recommend(criteo_run, serve_port, tmp_path):
    from ray import serve

    from raytrain.data.criteo import CAT_COLUMNS, INT_COLUMNS, read_file
    from raytrain.serve.runner import deploy
    from raytrain.train.export import load_model

    run_dir, day = criteo_run
    spec = parse_spec({"name": "serve-criteo", "kind": "serve", "storage": str(tmp_path), "serve": {
        "variants": {"fp32": {"run": run_dir}, "int4": {"run": run_dir, "quantize": "int4"}},
        "traffic": {"fp32": 0.5, "int4": 0.5}, "force_variant": "header", "port": serve_port,
        "route_prefix": "/criteo"}})
    out = deploy(spec)
    try:
        url = out["url"]
        lines = Path(day).read_text().splitlines()[:64]
        raw_rows = []
        for line in lines:
            f = line.split("\t")
            row = {c: (float(np.log1p(max(int(v), 0))) if v else 0.0) for c, v in zip(INT_COLUMNS, f[1:14])}
            row.update(dict(zip(CAT_COLUMNS, f[14:40])))  # the raw hex strings, empty where missing
            raw_rows.append(row)
        status, body = post(url + "/predict", {"rows": raw_rows}, variant="fp32")
        assert status == 200, body
        # the same rows as training prepared them, scored offline
        model = load_model(run_dir)
        sizes = [f.cardinality for f in model.schema.sparse]
        table = next(read_file(str(day), sizes))[0].slice(0, 64)
        hashed = [{c: table.column(c)[i].as_py() for c in INT_COLUMNS + CAT_COLUMNS} for i in range(64)]
        status, body2 = post(url + "/predict", {"rows": hashed}, variant="fp32")
        assert status == 200
        np.testing.assert_allclose(body["probabilities"], body2["probabilities"], rtol=0, atol=1e-6)
        from raytrain.data.batches import Columns

        cols = Columns(model.schema, {c: torch.tensor(table.column(c).to_numpy()) for c in CAT_COLUMNS}, {},
                       torch.tensor(np.stack([table.column(c).to_numpy() for c in INT_COLUMNS], 1)), torch.zeros(64))
        with torch.inference_mode():
            _, logits = model.module(cols.batch(torch.arange(64)))
        np.testing.assert_allclose(body["probabilities"], torch.sigmoid(logits.double()).numpy(), rtol=0, atol=1e-6)
        # int4 tables: close to fp32, not equal
        _, q = post(url + "/predict", {"rows": hashed}, variant="int4")
        diff = np.abs(np.array(q["probabilities"]) - body2["probabilities"])
        assert 0 < diff.max() < 0.05
        status, err = post(url + "/recommend", {"user_id": 1, "k": 5})
        assert status == 404 and "no single-valued user id and item id feature" in err["error"]
        status, err = post(url + "/predict", {"rows": [{**raw_rows[0], "cat_3": "zz"}]})
        assert status == 422 and err["error"] == "rows[0].cat_3: expected an integer id or 1-16 hex digits, got 'zz'"
    finally:
        serve.delete(spec.name)


def test_pointing_a_variant_at_another_model_rolls_over_under_load_without_a_failed_request(pipeline_out, serve_port,
                                                                                           tmp_path):
    """--update and --rollback under steady load: every request answered 200, each reply naming the model version
    that scored it, the old version's answers before the new one's."""
    import threading

    from ray import serve

    from raytrain.serve.runner import deploy, update, versions_file
    from raytrain.serve.sources import resolve

    steps = pipeline_out["steps"]
    base = {"name": "serve-swap", "kind": "serve", "storage": str(tmp_path), "serve": {
        "port": serve_port, "route_prefix": "/swap", "request_log": False, "replicas": 1}}

    def spec_with(source: dict):
        return parse_spec({**base, "serve": {**base["serve"], "variants": {"a": source}}})

    first, second = {"tune_run": steps["tune"]["run_dir"]}, {"distill": steps["distill"]["run_dir"]}
    v1, v2 = (resolve("a", spec_with(s).serve.variants["a"]).members[0].version for s in (first, second))
    assert v1 != v2
    out = deploy(spec_with(first))
    url = out["url"]
    results: list[tuple[int, list]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                status, body = post(url + "/predict", {"rows": [{"user_id": 12, "item_id": 50}]})
            except OSError as e:
                status, body = 0, {"error": str(e)}
            results.append((status, body.get("model_versions", {}).get("a", [])))

    threads = [threading.Thread(target=client) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        time.sleep(2.0)
        update(spec_with(second))
        time.sleep(2.0)
        swapped = len(results)
        update(spec_with(second), rollback=True)
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
        serve.delete("serve-swap")
    statuses = [s for s, _ in results]
    assert len(results) > 50 and statuses.count(200) == len(results), [r for r in results if r[0] != 200][:5]
    seen = [v[0] for _, v in results]
    assert seen[0] == v1 and v2 in seen[:swapped] and seen[-1] == v1
    # each version's answers come as one run: v1, then v2 (the two side by side only during the swap), then v1
    changes = sum(a != b for a, b in zip(seen, seen[1:]))
    assert changes <= 20, changes
    history = json.loads(versions_file(spec_with(first)).read_text())
    assert [h["variants"][0]["members"][0]["checkpoint"] for h in history] == [
        resolve("a", spec_with(s).serve.variants["a"]).members[0].checkpoint for s in (first, second, first)]


def test_a_member_sharded_over_table_shards_scores_as_the_whole_model_and_survives_a_shard_kill(criteo_run, serve_port,
                                                                                                tmp_path):
    import threading

    import ray
    from ray import serve

    from raytrain.data.batches import Columns
    from raytrain.data.criteo import CAT_COLUMNS, INT_COLUMNS, read_file
    from raytrain.serve.runner import deploy
    from raytrain.train.export import load_model

    run_dir, day = criteo_run
    spec = parse_spec({"name": "serve-shards", "kind": "serve", "storage": str(tmp_path), "serve": {
        "variants": {"sharded": {"run": run_dir, "shards": 2}}, "replicas": 2, "port": serve_port,
        "route_prefix": "/shards", "request_log": False}})
    out = deploy(spec)
    try:
        url = out["url"]
        model = load_model(run_dir)
        table = next(read_file(str(day), [f.cardinality for f in model.schema.sparse]))[0].slice(0, 500)
        rows = [{c: table.column(c)[i].as_py() for c in INT_COLUMNS + CAT_COLUMNS} for i in range(500)]
        status, body = post(url + "/predict", {"rows": rows})
        assert status == 200, body
        cols = Columns(model.schema, {c: torch.tensor(table.column(c).to_numpy()) for c in CAT_COLUMNS}, {},
                       torch.tensor(np.stack([table.column(c).to_numpy() for c in INT_COLUMNS], 1)), torch.zeros(500))
        with torch.inference_mode():
            _, logits = model.module(cols.batch(torch.arange(500)))
        np.testing.assert_allclose(body["probabilities"], torch.sigmoid(logits.double()).numpy(), rtol=0, atol=1e-6)
        member = _metadata(url)["models"][0]
        assert len(member["shards"]) == 2
        rows_held = [sum(s["rows"].values()) for s in member["shards"]]
        total = sum(f.cardinality for f in model.schema.sparse)
        assert sum(rows_held) == total and max(rows_held) < 0.6 * total  # each shard holds its part, not the whole

        # kill one replica of a shard under load: the dense part's one retry answers every request
        results: list[int] = []
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                try:
                    results.append(post(url + "/predict", {"rows": rows[:4]})[0])
                except OSError:
                    results.append(0)

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        victims = [a for a in ray.util.list_named_actors(all_namespaces=True)
                   if a["namespace"] == "serve" and "::serve-shards#member-sharded-0-shard-0#" in a["name"]]
        assert len(victims) == 2, victims
        ray.kill(ray.get_actor(victims[0]["name"], namespace="serve"), no_restart=True)
        time.sleep(5.0)
        stop.set()
        for t in threads:
            t.join(timeout=120)
        assert len(results) > 20 and all(s == 200 for s in results), [s for s in results if s != 200][:5]
    finally:
        serve.delete(spec.name)
