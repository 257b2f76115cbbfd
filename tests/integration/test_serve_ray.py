"""Ray Serve over real HTTP on 127.0.0.1: the small pipeline's stacked ensemble and distilled student as two variants."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raytrain.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FORCE = "X-Raytrain-Variant"  # the header the served application takes a forced variant from


def post(url: str, body, raw: bytes | None = None, variant: str | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({FORCE: variant} if variant else {})}
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def served(pipeline_out, tmp_path_factory):
    from ray import serve

    from raytrain.serve.runner import deploy

    steps = pipeline_out["steps"]
    spec = load_spec(ROOT / "jobs/serve_ml100k.yaml", [
        f"storage={tmp_path_factory.mktemp('serve')}", f"serve.port={_free_port()}",
        f"serve.variants.ensemble.ensemble={steps['ensemble']['run_dir']}",
        f"serve.variants.student.distill={steps['distill']['run_dir']}",
        # the student again, exploring on /recommend (reached by forcing it with the header; no share of the traffic)
        f"serve.variants.explore={{distill: {steps['distill']['run_dir']}, "
        "explore: {policy: epsilon_greedy, epsilon: 0.5, pool: 8, seed: 0}}", "serve.log_flush_s=0.5",
        "serve.traffic={ensemble: 0.8, student: 0.2, explore: 0.0}", "serve.replicas=2", "serve.max_request_rows=500",
        "serve.force_variant=header", f"serve.force_header={FORCE}"])
    out = deploy(spec)
    yield spec, out
    serve.delete(spec.name)


def _test_rows(n: int) -> tuple[list[dict], object]:
    from raytrain.data import prepare

    spec = load_spec(ROOT / "jobs/pipeline_ml100k.yaml")
    prepared = prepare(spec.data)
    table = pq.read_table(prepared.paths["test"][0]).slice(0, n)
    names = [f.name for f in prepared.schema.sparse] + list(prepared.schema.dense)
    return [{k: r[k] for k in names} for r in table.to_pylist()], table


def test_served_scores_equal_the_offline_models(served):
    from raytrain.ensemble.combine import Combiner
    from raytrain.ensemble.members import load_member, score

    spec, out = served
    rows, table = _test_rows(300)
    status, body = post(out["url"] + "/predict", {"rows": rows}, variant="ensemble")
    assert status == 200 and body["variant"] == "ensemble" and body["unknown_ids"] == {}
    ens = json.loads((Path(out["variants"]["ensemble"]["source"].split()[1]) / "ensemble.json").read_text())
    logits = np.stack([score(load_member(m["run_dir"], m["name"]), "test")[0][:300] for m in ens["members"]], 1)
    offline = Combiner.from_dict(ens["combiners"]["stacked"]).predict(logits)
    np.testing.assert_allclose(body["probabilities"], offline, rtol=0, atol=1e-6)
    # ids only: the feature store fills in the rest, with the values the test rows carry
    ids_only = [{"user_id": r["user_id"], "item_id": r["item_id"]} for r in rows]
    status, body2 = post(out["url"] + "/predict", {"rows": ids_only}, variant="ensemble")
    assert status == 200
    np.testing.assert_allclose(body2["probabilities"], offline, rtol=0, atol=1e-6)
    # the student variant is the distilled model on its own
    student = load_member(out["variants"]["student"]["members"][0]["run_dir"], "student")
    s_logits = score(student, "test")[0][:300]
    status, body3 = post(out["url"] + "/predict", {"rows": rows}, variant="student")
    assert status == 200 and body3["variant"] == "student"
    np.testing.assert_allclose(body3["probabilities"], 1 / (1 + np.exp(-s_logits)), rtol=0, atol=1e-6)
    # recommend: top-k of all items for a user, best first, and the candidates' own scores agree with /predict
    status, rec = post(out["url"] + "/recommend", {"user_id": 12, "k": 5}, variant="ensemble")
    assert status == 200 and len(rec["items"]) == 5
    scores = [x["score"] for x in rec["items"]]
    assert scores == sorted(scores, reverse=True)
    status, check = post(out["url"] + "/predict", variant="ensemble", body={"rows": [
        {"user_id": 12, "item_id": x["item_id"]} for x in rec["items"]]})
    # the same rows scored in a batch of 5 and inside the batch of all items: float32 kernels may round the
    # last bit differently by batch size, so the same 1e-6 as the other score checks
    np.testing.assert_allclose(check["probabilities"], scores, rtol=0, atol=1e-6)



def test_concurrent_requests_are_merged_and_each_gets_its_own_rows_back(served):
    """Batching: concurrent one-row requests share member calls (the ingress's /metadata counts the merged
    batches and the requests in them), and every request still gets exactly its own row's probability."""
    from concurrent.futures import ThreadPoolExecutor

    spec, out = served
    rows, _ = _test_rows(64)
    _, expected = post(out["url"] + "/predict", {"rows": rows}, variant="ensemble")
    def metadata() -> dict:
        return json.loads(urllib.request.urlopen(out["url"] + "/metadata", timeout=30).read())

    before = metadata()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda r: post(out["url"] + "/predict", {"rows": [r]}, variant="ensemble"), rows))
    after = metadata()
    assert all(status == 200 for status, _ in answers)
    np.testing.assert_allclose([b["probabilities"][0] for _, b in answers], expected["probabilities"], rtol=0, atol=1e-6)
    requests = after["batching"]["requests"] - before["batching"]["requests"]
    batches = after["batching"]["batches"] - before["batching"]["batches"]
    # a request that found the ingress otherwise idle went straight through; the rest were merged
    assert 16 <= requests <= 64 and 1 <= batches < requests, (batches, requests)


def test_traffic_split_is_sticky_and_close_to_the_shares(served):
    spec, out = served
    users = list(range(1, 944)) + list(range(5000, 6057))  # known users and 1,057 unknown ones: 2,000 in all
    seen: dict[int, str] = {}
    for lo in range(0, len(users), 500):
        chunk = users[lo:lo + 500]
        status, body = post(out["url"] + "/predict", {"rows": [{"user_id": u, "item_id": 50} for u in chunk]})
        assert status == 200
        seen.update(zip(chunk, body["variants"]))
    share = sum(v == "student" for v in seen.values()) / len(seen)
    assert abs(share - 0.2) < 0.03, share  # binomial sd for 2,000 users: 0.009
    # sticky: the same users in another order and other batches land on the same variants
    again = users[::-1][:700]
    status, body = post(out["url"] + "/predict", {"rows": [{"user_id": u, "item_id": 7} for u in again[:350]]})
    status2, body2 = post(out["url"] + "/predict", {"rows": [{"user_id": u, "item_id": 9} for u in again[350:]]})
    assert status == status2 == 200
    assert body["variants"] + body2["variants"] == [seen[u] for u in again]
    status, rec = post(out["url"] + "/recommend", {"user_id": 77, "k": 3})
    assert status == 200 and rec["variant"] == seen[77]


@pytest.mark.parametrize("path,body,code,words", [
    ("/predict", None, 400, "not valid JSON"),
    ("/predict", [1, 2], 422, "expected a JSON object"),
    ("/predict", {}, 422, "rows: expected a non-empty list"),
    ("/predict", {"rows": []}, 422, "non-empty list"),
    ("/predict", {"rows": [{"item_id": 3}]}, 422, "rows[0]: missing field(s) 'user_id'"),
    ("/predict", {"rows": [{"user_id": 1, "item_id": 3}, {"user_id": "abc", "item_id": 3}]}, 422,
     "rows[1].user_id: expected an integer id, got 'abc'"),
    ("/predict", {"rows": [{"user_id": 1, "item_id": 3, "colour": 1}]}, 422, "unknown field(s) 'colour'"),
    ("/predict", {"rows": [{"user_id": 1, "item_id": 3, "genres": 4}]}, 422, "rows[0].genres: expected a list"),
    ("/predict", {"rows": [{"user_id": 1, "item_id": 3, "age_scaled": "old"}]}, 422,
     "rows[0].age_scaled: expected a finite number"),
    ("/predict", {"rows": [{"user_id": 1, "item_id": 3}], "variant": "ensemble"}, 403,
     "variant: a request may not choose its variant: this application takes it from the X-Raytrain-Variant header"),
    ("/recommend", {"user_id": 1, "variant": "explore"}, 403, "a request may not choose its variant"),
    ("/predict", {"rows": [{"user_id": 1, "item_id": 3}] * 501}, 413, "more than the 500 allowed"),
    ("/predict", {"rows": [3]}, 422, "rows[0]: expected an object"),
    ("/recommend", {"k": 3}, 422, "missing field 'user_id'"),
    ("/recommend", {"user_id": 1, "k": 0}, 422, "k: expected an integer in [1, 100]"),
    ("/recommend", {"user_id": 1, "candidates": "all"}, 422, "candidates: expected a non-empty list"),
    ("/feedback", {"request_id": "f" * 32, "item_id": 3}, 404, "is not a logged request of this application"),
    ("/feedback", {"item_id": 3}, 422, "request_id: expected the request_id string"),
    ("/feedback", {"request_id": "abc", "item_id": 3, "reward": "yes"}, 422, "reward: expected a finite number"),
    ("/feedback", {"request_id": "abc", "item_id": 3, "click": 1}, 422, "unknown field(s) 'click'"),
])
def test_bad_payloads_get_4xx_with_a_reason(served, path, body, code, words):
    _, out = served
    status, reply = post(out["url"] + path, body, raw=b"{not json" if body is None else None)
    assert status == code, reply
    assert words in reply["error"]


def _json_values():
    from hypothesis import strategies as st

    scalars = (st.none() | st.booleans() | st.integers(min_value=-2**80, max_value=2**80) | st.text(max_size=12)
               | st.floats(allow_nan=False, allow_infinity=False))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


def _bodies():
    """Arbitrary JSON, and objects shaped like each endpoint's with wrong types and huge numbers in their fields."""
    from hypothesis import strategies as st

    value = _json_values() | st.sampled_from([1, 50, 0, -1, 10**30, 1e308, "12", [1], {"a": 1}])
    row = st.dictionaries(st.sampled_from(["user_id", "item_id", "genres", "age_scaled", "occupation", "zz"]), value,
                          max_size=6)
    return st.one_of(
        _json_values(),
        st.fixed_dictionaries({"rows": st.lists(row, max_size=4) | value}),
        st.fixed_dictionaries({"user_id": value}, optional={"k": value, "candidates": st.lists(value, max_size=4) | value,
                                                             "exclude_rated": value}),
        st.fixed_dictionaries({"request_id": value, "item_id": value}, optional={"reward": value}),
    )


def test_fuzzed_payloads_never_get_a_5xx_and_the_server_stays_healthy(served):
    """Arbitrary JSON and non-JSON bodies, huge numbers, deep nesting and wrong types on /predict, /recommend and
    /feedback: a 2xx for what happens to be valid, otherwise a 4xx with a reason; never a 5xx."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    _, out = served
    seen: dict[int, int] = {}

    @settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(path=st.sampled_from(["/predict", "/recommend", "/feedback"]),
           body=_bodies() | st.binary(max_size=64) | st.sampled_from([b"[" * 100_000, b'{"rows": ' + b"[" * 5000,
                                                                      b"1" * 5000, b"\xff\xfe", b""]))
    def check(path, body):
        raw = body if isinstance(body, bytes) else None
        status, reply = post(out["url"] + path, body, raw=raw)
        seen[status] = seen.get(status, 0) + 1
        assert status < 500, (path, body, reply)
        if status >= 400:
            assert isinstance(reply.get("error"), str) and reply["error"], (path, body, reply)

    check()
    assert sum(v for k, v in seen.items() if 400 <= k < 500) > 50, seen
    health = json.loads(urllib.request.urlopen(out["url"] + "/healthz", timeout=30).read())
    assert health["status"] == "ok"
    meta = json.loads(urllib.request.urlopen(out["url"] + "/metadata", timeout=30).read())
    assert meta["requests"]["failed"] == 0 and meta["requests"]["rejected"] > 50
    status, body = post(out["url"] + "/predict", {"rows": [{"user_id": 1, "item_id": 2}]})
    assert status == 200 and body["forced"] is False  # routed by the split


def test_out_of_vocabulary_ids_are_mapped_and_counted(served):
    _, out = served
    status, body = post(out["url"] + "/predict", {"rows": [
        {"user_id": 10**9, "item_id": 50}, {"user_id": 3, "item_id": -5}, {"user_id": 3, "item_id": 50}]},
        variant="ensemble")
    assert status == 200 and body["unknown_ids"] == {"user_id": 1, "item_id": 1}
    assert all(0 < p < 1 for p in body["probabilities"])
    meta = json.loads(urllib.request.urlopen(out["url"] + "/metadata", timeout=30).read())
    assert set(meta["variants"]) == {"ensemble", "student", "explore"} and meta["variants"]["student"]["share"] == 0.2
    assert meta["variants"]["explore"]["explore"]["policy"] == "epsilon_greedy"
    ckpts = {name: [m["checkpoint"] for m in v["members"]] for name, v in out["variants"].items()}
    assert ckpts["explore"] == ckpts["student"]  # one member deployment serves both variants
    assert meta["features"]["required"] == ["user_id", "item_id"] and meta["oov"] == "unknown"
    # three distinct checkpoints (explore shares the student's); forward passes are per replica (2 of each)
    assert len(meta["models"]) == 3 and all(m["parameters"] > 0 and m["forward_passes"] >= 0 for m in meta["models"])


def test_exploring_variant_logs_propensities_and_takes_feedback(served):
    from raytrain.bandit.runner import run_bandit
    from raytrain.serve.decisions import read_logs
    from raytrain.spec import parse_spec

    spec, out = served
    replies = []
    for user in range(1, 61):
        status, rec = post(out["url"] + "/recommend", {"user_id": user, "k": 3}, variant="explore")
        assert status == 200, rec
        assert rec["variant"] == "explore" and len(rec["items"]) == 3 and len(rec["request_id"]) == 32
        assert rec["forced"] is True
        replies.append(rec)
    # feedback: a click on the first shown item of the first 20 requests; unknown items are refused
    for rec in replies[:20]:
        status, body = post(out["url"] + "/feedback", {"request_id": rec["request_id"],
                                                       "item_id": rec["items"][0]["item_id"]})
        assert status == 200 and body["reward"] == 1.0, body
    shown = {i["item_id"] for i in replies[0]["items"]}
    other = next(i for i in range(1, 2000) if i not in shown)
    status, body = post(out["url"] + "/feedback", {"request_id": replies[0]["request_id"], "item_id": other})
    assert status == 422 and "was not among request" in body["error"]

    log_dir = Path(out["run_dir"]) / "logs"
    deadline = time.time() + 60
    while time.time() < deadline:  # the decision log writes a parquet file every log_flush_s
        decisions, feedback = read_logs(log_dir)
        if decisions.num_rows >= 180 and feedback.num_rows >= 20:
            break
        time.sleep(0.5)
    assert decisions.num_rows == 180 and feedback.num_rows == 20
    by_request = {r["request_id"]: r for r in replies}
    for row in decisions.to_pylist():
        probs, cands, scores = np.array(row["probabilities"]), row["candidates"], np.array(row["scores"])
        assert len(cands) == 8 and abs(probs.sum() - 1.0) < 1e-9  # one distribution per decision
        assert probs[cands.index(row["item"])] == pytest.approx(row["propensity"], abs=1e-12)
        # epsilon-greedy by hand: with probability eps a uniformly shuffled pool (each of the 8 candidates 1/8 at
        # any position), else the greedy slate, whose item at this position is the pool's (best-first) same place
        assert np.all(np.diff(scores) <= 0)  # the pool: the ranker's best candidates, best first
        expect = np.full(8, 0.5 / 8)
        expect[row["position"]] += 0.5
        np.testing.assert_allclose(probs, expect, atol=1e-12)
        served_item = by_request[row["request_id"]]["items"][row["position"]]
        assert served_item["item_id"] == row["item"] and served_item["propensity"] == pytest.approx(row["propensity"])
        assert json.loads(row["context"])["user_id"] == row["user"] and row["variant"] == "explore"
        assert row["forced"] is True  # chosen by the request's header, not by the split: analyses can leave it out
    # the logged scores are the ranker's (the student's) probabilities for these candidates
    row = decisions.slice(0, 1).to_pylist()[0]
    status, body = post(out["url"] + "/predict", {"rows": [{"user_id": row["user"], "item_id": c}
                                                           for c in row["candidates"]]}, variant="student")
    np.testing.assert_allclose(body["probabilities"], row["scores"], atol=1e-6)

    # a bandit job evaluates policies on these logs: the logging policy itself (IPS = the logged mean reward)
    base = {"name": "served-ope", "kind": "bandit", "storage": str(Path(out["run_dir"]).parent.parent),
            "data": {"source": "served-logs", "path": out["run_dir"]}, "bandit": {"bootstrap": {"samples": 100}}}
    same = run_bandit(parse_spec({**base, "bandit": {**base["bandit"], "estimators": ["ips", "snips"],
                                                     "policy": {"name": "epsilon_greedy", "epsilon": 0.5}}}))
    assert [e["value"] for e in same["estimates"]] == pytest.approx([20 / 180] * 2)
    greedy = run_bandit(parse_spec({**base, "bandit": {**base["bandit"], "estimators": ["ips", "dm", "dr"],
                                                       "policy": {"name": "epsilon_greedy", "epsilon": 0.0}}}))
    assert all(np.isfinite(e["value"]) and e["ci_low"] <= e["value"] <= e["ci_high"] for e in greedy["estimates"])


def test_every_request_is_logged_with_its_variant_and_user_and_an_abtest_reads_them(served, tmp_path):
    from raytrain.abtest import run_abtest
    from raytrain.serve.decisions import read_log
    from raytrain.spec import parse_spec

    spec, out = served
    users = list(range(300, 380))
    replies = {}
    for user in users:  # routed by the split (no header): ensemble 0.8, student 0.2
        status, rec = post(out["url"] + "/recommend", {"user_id": user, "k": 4})
        assert status == 200 and rec["forced"] is False and len(rec["request_id"]) == 32
        replies[user] = rec
    for user in users[:30]:  # a click on the first item shown to 30 users; feedback now works on any request
        status, body = post(out["url"] + "/feedback", {"request_id": replies[user]["request_id"],
                                                       "item_id": replies[user]["items"][0]["item_id"]})
        assert status == 200, body
    status, pred = post(out["url"] + "/predict", {"rows": [{"user_id": 390, "item_id": 5}, {"user_id": 391, "item_id": 7}]})
    assert status == 200 and len(pred["request_id"]) == 32
    logs = Path(out["run_dir"]) / "logs"
    ids = {r["request_id"] for r in replies.values()}
    deadline = time.time() + 60
    while time.time() < deadline:
        requests = read_log(logs, "requests").to_pandas()
        if ids <= set(requests["request_id"]) and pred["request_id"] in set(requests["request_id"]):
            break
        time.sleep(0.5)
    ours = requests[requests["request_id"].isin(ids)].set_index("user")
    assert len(ours) == 80 and not ours["forced"].any() and (ours["endpoint"] == "recommend").all()
    for user, rec in replies.items():
        row = ours.loc[str(user)]
        assert row["variant"] == rec["variant"] and list(row["items"]) == [i["item_id"] for i in rec["items"]]
    predicted = requests[requests["request_id"] == pred["request_id"]].set_index("user")
    assert sorted(predicted.index) == ["390", "391"] and list(predicted.loc["391", "items"]) == [7]
    assert set(predicted["variant"]) <= {"ensemble", "student"} and (predicted["endpoint"] == "predict").all()

    deadline = time.time() + 60
    while time.time() < deadline and len(read_log(logs, "feedback")) < 30:
        time.sleep(0.5)
    report = run_abtest(parse_spec({"name": "ab", "kind": "abtest", "storage": str(tmp_path),
                                    "abtest": {"serve_run": out["run_dir"], "control": "ensemble"}}))
    served_users = requests[(requests["endpoint"] == "recommend") & ~requests["forced"]].groupby("variant")["user"]
    for variant in ("ensemble", "student"):
        assert report["variants"][variant]["users"] == served_users.nunique().get(variant, 0)
    assert report["forced_requests"] >= 60  # the exploring test's forced requests, left out
    assert sum(v["clicks"] for v in report["variants"].values()) >= 30


def test_a_killed_replica_is_replaced_and_one_retry_suffices(served):
    import ray
    from ray import serve

    spec, out = served
    rows = [{"user_id": u, "item_id": 50} for u in range(1, 41)]
    results: list[tuple[int, int]] = []  # (status of the first try, status after at most one retry)
    stop = threading.Event()

    def client():
        while not stop.is_set():
            try:
                first, _ = post(out["url"] + "/predict", {"rows": rows}, variant="ensemble")
            except OSError:
                first = 0
            final = first
            if first != 200:
                time.sleep(0.2)
                final, _ = post(out["url"] + "/predict", {"rows": rows}, variant="ensemble")
            results.append((first, final))

    t = threading.Thread(target=client)
    t.start()
    time.sleep(2.0)
    # replica actors are named SERVE_REPLICA::<app>#<deployment>#<id> in namespace serve
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["namespace"] == "serve" and f"::{spec.name}#member-ensemble-0#" in a["name"]]
    assert len(replicas) == 2, replicas
    ray.kill(ray.get_actor(replicas[0]["name"], namespace="serve"), no_restart=True)
    time.sleep(6.0)
    stop.set()
    t.join(timeout=120)
    retried = sum(first != 200 for first, _ in results)
    print(f"{len(results)} requests while a replica was killed: {retried} needed the client's retry")
    assert len(results) > 10
    assert all(final == 200 for _, final in results), results
    assert all(first in (0, 200, 503) for first, _ in results), results  # unavailable is 503, never a 500
    assert not any(500 <= final for _, final in results)
    deployment = next(d for n, d in serve.status().applications[spec.name].deployments.items()
                      if n == "member-ensemble-0")
    deadline = time.time() + 120
    while time.time() < deadline:
        deployment = next(d for n, d in serve.status().applications[spec.name].deployments.items()
                          if n == "member-ensemble-0")
        if deployment.replica_states.get("RUNNING", 0) == 2:
            break
        time.sleep(1.0)
    assert deployment.replica_states.get("RUNNING", 0) == 2, deployment.replica_states


def test_a_pipeline_serve_step_serves_its_ensemble_step(served, pipeline_out, tmp_path):
    import yaml
    from ray import serve

    from raytrain.kinds.pipeline import run_pipeline
    from raytrain.spec.loader import parse_spec

    running, _ = served  # one Serve proxy per cluster: this application joins it under another route
    doc = yaml.safe_load((ROOT / "jobs/pipeline_ml100k.yaml").read_text())
    for key in ("tune", "distill"):
        doc.pop(key)
    doc.update(name="pipe-serve", storage=str(tmp_path), pipeline={"steps": ["ensemble", "serve"]},
               ensemble={"tune_run": pipeline_out["steps"]["tune"]["run_dir"], "top_k": 2, "combine": ["mean"]},
               serve={"variants": {"ens": {"step": "ensemble", "combine": "mean"}}, "port": running.serve.port,
                      "route_prefix": "/pipe"})
    out = run_pipeline(parse_spec(doc, "test"), serve_block=False)
    try:
        url = out["steps"]["serve"]["url"]
        assert url.endswith("/pipe")
        status, body = post(url + "/predict", {"rows": [{"user_id": 1, "item_id": 2}, {"user_id": 5, "item_id": 9}]})
        assert status == 200 and body["variant"] == "ens" and len(body["probabilities"]) == 2
        served_json = json.loads((Path(out["steps"]["serve"]["run_dir"]) / "serve.json").read_text())
        assert served_json["variants"]["ens"]["combine"] == "mean"
        assert len(served_json["variants"]["ens"]["members"]) == 2
    finally:
        serve.delete("pipe-serve")
