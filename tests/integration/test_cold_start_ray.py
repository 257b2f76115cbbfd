"""Cold start over real HTTP: a DCN-v2 trained with item text (data.text) on MovieLens-100K with a tenth of the items
held out, served on Ray Serve; an item it never saw is scored from the text the request gives."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import _free_port, post_json

from raytrain.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
TEXT = "data.text={item: [movie_title, release_year, class]}"


def test_an_unseen_item_is_scored_from_its_text(ray_local, tmp_path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from ray import serve

    from raytrain.data import prepare
    from raytrain.serve.decisions import read_log
    from raytrain.serve.runner import deploy
    from raytrain.train.runner import run_train

    spec = load_spec(ROOT / "jobs/train_ml100k.yaml", [
        f"storage={tmp_path}", "train.epochs=1", "train.workers=1", TEXT, "data.split.cold_items=0.1",
        "train.id_dropout={item_id: 0.2}"])
    run_dir = run_train(spec)["run_dir"]
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
