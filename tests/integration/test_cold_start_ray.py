"""Cold start over real HTTP: a DCN-v2 trained with item text (data.text) on MovieLens-100K with a tenth of the items
held out, served on Ray Serve; an item it never saw is scored from the text the request gives."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import _free_port, post_json

from raytrain.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
TEXT = "data.text={item: [movie_title, release_year, class]}"


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory):
    """A DCN-v2 trained with item text, and a content model fitted on the same data (the same rows)."""
    from raytrain.train.content import run_content
    from raytrain.train.runner import run_train

    storage = tmp_path_factory.mktemp("cold")
    overrides = [f"storage={storage}", "train.epochs=1", "train.workers=1", TEXT, "data.split.cold_items=0.1"]
    spec = load_spec(ROOT / "jobs/train_ml100k.yaml", [*overrides, "train.id_dropout={item_id: 0.2}"])
    content = run_content(load_spec(ROOT / "jobs/train_ml100k.yaml", [*overrides, "model.arch=content"]))
    return spec, run_train(spec), content


def test_an_unseen_item_is_scored_from_its_text(runs, tmp_path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from ray import serve

    from raytrain.data import prepare
    from raytrain.serve.decisions import read_log
    from raytrain.serve.runner import deploy

    spec, dcn, _ = runs
    run_dir = dcn["run_dir"]
    catalogue = pq.read_table(Path(prepare(spec.data).paths["train"][0]).parent / "item_text.parquet").to_pandas()
    # the items training saw (not the held-out ones, which the store does not know)
    trained = set(pq.read_table(prepare(spec.data).paths["train"][0], columns=["item_id"]).column(0).to_pylist())
    out = deploy(load_spec(ROOT / "jobs/serve_ml100k.yaml", [
        f"storage={tmp_path}", f"serve.port={_free_port()}", f"serve.variants={{text: {{run: {run_dir}}}}}",
        "serve.traffic={text: 1.0}", "serve.log_flush_s=0.5"]))
    url = out["url"]
    try:
        new = 10**6  # an id outside the catalogue: the unknown row
        rows = [{"user_id": 5, "item_id": new},
                {"user_id": 5, "item_id": new, "item_text": "Toy Story 3 | 2010 | Animation Children's Comedy"},
                {"user_id": 5, "item_id": new, "item_text": "Schindler's List | 1993 | Drama War"}]
        code, body = post_json(f"{url}/predict", {"rows": rows})
        assert code == 200, body
        p = body["probabilities"]
        assert abs(p[1] - p[0]) > 1e-4 and abs(p[2] - p[0]) > 1e-4 and abs(p[1] - p[2]) > 1e-4, p
        assert body["cold_start"] == 2 and body["unknown_ids"] == {"item_id": 3}
        # a known item sent with its own catalogue text scores as it does from the store: the request path encodes
        # and projects text exactly as the data step did (the store's features come from the prepared split)
        known = catalogue[catalogue["item_id"].isin(trained)].iloc[[0, 40, 400]]
        plain = [{"user_id": 7, "item_id": int(i)} for i in known["item_id"]]
        texted = [{**r, "item_text": t} for r, t in zip(plain, known["text"])]
        _, a = post_json(f"{url}/predict", {"rows": plain})
        _, b = post_json(f"{url}/predict", {"rows": texted})
        np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=2e-4)
        assert a["cold_start"] == 0 and b["cold_start"] == 3
        # /recommend ranks new items beside known ones from their text, and names them by the client's ids
        known_ids = [int(i) for i in catalogue["item_id"] if i in trained][:20]
        fresh = [{"item_id": new, "item_text": rows[1]["item_text"]}, {"item_id": new + 1, "item_text": rows[2]["item_text"]}]
        code, rec = post_json(f"{url}/recommend", {"user_id": 5, "k": 22, "candidates": known_ids, "new_items": fresh})
        assert code == 200, rec
        got = {x["item_id"]: x["score"] for x in rec["items"]}
        assert set(got) == {*known_ids, new, new + 1} and rec["cold_start"] == 2 and rec["unknown_ids"] == {}
        assert got[new] == pytest.approx(p[1], abs=1e-6) and got[new + 1] == pytest.approx(p[2], abs=1e-6)
        for bad_new in ([{"item_id": "x", "item_text": "a"}], [{"item_id": 3}], [{"item_id": 3, "item_text": 5}]):
            code, reply = post_json(f"{url}/recommend", {"user_id": 5, "candidates": known_ids, "new_items": bad_new})
            assert code == 422 and ("new_items[0]" in reply["error"] or "item_text" in reply["error"]), reply
        for bad, words in ((1, "item_text: expected a non-empty string"), ("  ", "non-empty"), ("x" * 5000, "4096")):
            code, reply = post_json(f"{url}/predict", {"rows": [{"user_id": 5, "item_id": new, "item_text": bad}]})
            assert code == 422 and words in reply["error"], reply

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.one_of(st.text(max_size=300), st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=3)))
        def never_5xx(text):
            code, reply = post_json(f"{url}/predict", {"rows": [{"user_id": 3, "item_id": new, "item_text": text}]})
            assert code in (200, 422), (text, code, reply)

        never_5xx()
        # the request log marks which scored items were cold starts
        deadline = time.time() + 30
        while time.time() < deadline:
            requests = read_log(Path(out["run_dir"]) / "logs", "requests")
            if requests.num_rows >= 3:
                break
            time.sleep(0.5)
        logged = requests.to_pandas()
        first = logged[logged["request_id"] == body["request_id"]].iloc[0]
        assert list(first["items"]) == [new] * 3 and list(first["cold_items"]) == [new] * 2
        ranked = logged[logged["request_id"] == rec["request_id"]].iloc[0]
        assert len(ranked["items"]) == 22 and sorted(ranked["cold_items"]) == [new, new + 1]
    finally:
        serve.shutdown()


def test_content_and_hybrid_recommenders_and_registered_new_items(runs, tmp_path):
    """The content model alone (retrieving over the catalogue), as the retriever of a DCN-v2 (two stages), and in a
    stacked ensemble with it; new items registered in a file, re-read when it changes."""
    from ray import serve

    from raytrain.ensemble.runner import run_ensemble
    from raytrain.serve.runner import deploy
    from raytrain.spec.loader import parse_spec
    from raytrain.train.export import load_model

    spec, dcn, content = runs
    # hybrid: behaviour and content stacked on validation; both runs scored the same rows
    report = run_ensemble(parse_spec({"name": "hybrid", "kind": "ensemble", "storage": str(tmp_path),
                                      "ensemble": {"runs": [dcn["run_dir"], content["run_dir"]]}}, "test"))["report"]
    auc = {r["model"]: r["test_auc"] for r in report}
    assert len(auc) == 5 and min(auc.values()) == pytest.approx(content["test_auc"], abs=1e-9)
    assert auc["ensemble:stacked"] > content["test_auc"] + 0.03  # behaviour adds to content

    registry = tmp_path / "new_items.jsonl"
    new = {10**6: "Toy Story 3 | 2010 | Animation Children's Comedy", 10**6 + 1: "Schindler's List | 1993 | Drama War"}
    registry.write_text("".join(json.dumps({"item_id": i, "item_text": t}) + "\n" for i, t in new.items()))
    out = deploy(load_spec(ROOT / "jobs/serve_ml100k.yaml", [
        f"storage={tmp_path}", f"serve.port={_free_port()}", "serve.log_flush_s=0.5", "serve.force_variant=body",
        f"serve.variants={{dcn: {{run: {dcn['run_dir']}}}, content: {{run: {content['run_dir']}}}, "
        f"two: {{run: {dcn['run_dir']}, retrieve_from: content, retrieve_k: 50}}}}",
        "serve.traffic={dcn: 1.0, content: 0.0, two: 0.0}", f"serve.new_items={registry}",
        "serve.new_items_check_s=0.2"]))
    url = out["url"]
    try:
        # /predict: a registered id is scored from its registered text, exactly as if the row carried it
        rows = [{"user_id": 5, "item_id": i} for i in new] + [
            {"user_id": 5, "item_id": i, "item_text": t} for i, t in new.items()]
        for variant in ("dcn", "content"):
            code, body = post_json(f"{url}/predict", {"rows": rows, "variant": variant})
            assert code == 200, body
            p = body["probabilities"]
            assert p[:2] == pytest.approx(p[2:], abs=1e-6) and abs(p[0] - p[1]) > 1e-4
            # the rows that sent their text count as unknown ids (as above); the registered ids are known to the store
            assert body["cold_start"] == 4 and body["unknown_ids"] == {"item_id": 2}
        # /recommend on the content variant: its index over the catalogue plus the registered items, against brute
        # force from the fitted profile and the catalogue's text features, less the items the user rated (the store's
        # list: the user's latest row's history)
        loaded = load_model(content["run_dir"])
        net = loaded.module.model.net
        code, rec = post_json(f"{url}/recommend", {"user_id": 5, "k": 100, "variant": "content"})
        assert code == 200, rec
        _, reg = post_json(f"{url}/predict", {"rows": [{"user_id": 5, "item_id": i} for i in new],
                                               "variant": "content"})
        from raytrain.data import prepare

        prepared = prepare(spec.data)
        per_item = np.load(Path(prepared.paths["train"][0]).parent / "text.npz")["per_item"]
        known = np.unique(np.concatenate([pq.read_table(prepared.paths[s][0], columns=["item_id"]).column(0)
                                          .to_numpy() for s in ("train", "validation", "test")]))
        known = known[known > 0]
        profile = net.profiles[5].double().numpy()
        x = per_item[known].astype(np.float64)
        cos = x @ profile / (np.linalg.norm(x, axis=1) * np.linalg.norm(profile))
        logit = float(net.scale) * cos + float(net.bias)
        seen = prepared.schema.seen_items
        rows5 = pa.concat_tables([pq.read_table(prepared.paths[s][0], columns=["user_id", seen])
                                  for s in ("train", "validation", "test")]).to_pandas()
        rated = set(rows5.loc[rows5["user_id"] == 5, seen].iloc[-1]) - {0}
        assert len(rated) > 5
        expect = {int(i): 1 / (1 + np.exp(-v)) for i, v in zip(known, logit) if int(i) not in rated}
        expect.update({i: q for i, q in zip(new, reg["probabilities"])})
        got = {x["item_id"]: x["score"] for x in rec["items"]}
        best = sorted(expect.values(), reverse=True)
        assert len(got) == 100 and all(s == pytest.approx(expect[i], abs=1e-5) for i, s in got.items())
        assert min(got.values()) >= best[99] - 1e-5  # nothing better was left out
        assert rec["cold_start"] == sum(i in new for i in got)
        # two stages: the content model retrieves 50, the DCN-v2 ranks them and the registered items
        code, two = post_json(f"{url}/recommend", {"user_id": 5, "k": 52, "variant": "two"})
        assert code == 200, two
        ranked = {x["item_id"]: x["score"] for x in two["items"]}
        assert set(new) <= set(ranked) and len(ranked) == 52
        _, again = post_json(f"{url}/predict", {"rows": [{"user_id": 5, "item_id": i} for i in ranked],
                                                 "variant": "dcn"})
        assert list(ranked.values()) == pytest.approx(again["probabilities"], abs=1e-5)
        # the file changes: a third item is registered within the check interval; a bad file keeps the last good
        third = 10**6 + 2
        with open(registry, "a") as f:
            f.write(json.dumps({"item_id": third, "item_text": "Heat 2 | 2026 | Action Crime Thriller"}) + "\n")
        deadline = time.time() + 20
        while time.time() < deadline:
            _, body = post_json(f"{url}/predict", {"rows": [{"user_id": 5, "item_id": third}], "variant": "dcn"})
            if body["cold_start"] == 1:
                break
            time.sleep(0.3)
        assert body["cold_start"] == 1 and body["unknown_ids"] == {}
        registry.write_text('{"item_id": 1, "item_text": "an id of the catalogue"}\n')
        time.sleep(0.5)
        _, body = post_json(f"{url}/predict", {"rows": [{"user_id": 5, "item_id": third}], "variant": "dcn"})
        assert body["cold_start"] == 1
        health = json.loads(urllib.request.urlopen(f"{url}/healthz", timeout=10).read())
        assert health["new_items"]["items"] == 3 and "item_id 1 is an item of the catalogue" in \
            health["new_items"]["error"]
    finally:
        serve.shutdown()
