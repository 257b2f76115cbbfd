"""Serving at the scale raytrain trains: quantized tables, retrieval, two stages, swaps, table shards.

    python benchmarks/serve_scale.py --work /tmp/serve-scale        # trains what it needs once, then reuses it

What it builds under ``--work`` (or reuses when there): the demo job's DCN-v2 (jobs/train_ml100k.yaml), the two-tower
job's model (jobs/train_ml100k_two_tower.yaml), and a Criteo-shaped DLRM (jobs/train_criteo_synth.yaml on
``--criteo-rows`` synthetic log lines, tables of ``--criteo-table-rows`` rows, D 16). The two-tower's towers end in
64 dimensions (``model.tower=[128, 64]``): the retrieval goal is stated for d 64.

1. **Quantized tables**: each model's test split scored with fp32 tables and with int8 / int4 tables (TorchRec's
   inference quantization, as a served member stores them: ``raytrain.serve.quantize``); the AUC change and the
   tables' bytes (FBGEMM's storage) against fp32.
   The pretrained HSTU (jobs/pretrain_hstu_ml100k.yaml) likewise: its item table at int8 / int4, NDCG@10 over the
   test users (leave-one-out, the whole catalogue ranked, seen items left out) against fp32's.
2. **Retrieval at catalogue scale**: a synthetic catalogue of ``--items`` items made by the trained two-tower's item
   tower (each item's tower input is a real item's, moved by Gaussian noise of half the inputs' spread per
   coordinate, so the vectors have the model's structure rather than uniform noise); the queries are the real users'
   user-tower vectors. One query at a time (a /recommend request), top 100: raytrain's exact path (what serves
   catalogues below ``retrieval.exact_below``) against the IVF index (``raytrain.serve.retrieval``) and the fused
   top-K kernel, alternating in blocks; recall@100 against exact; index build time.
3. **Two stages on ML-100K**: the two-tower retrieves 200 unseen items per test user, the DCN-v2 ranks them; NDCG@10
   of the test positives against the DCN-v2 ranking every unseen item.
4. **A model swap under load**: the demo DCN-v2 served on Ray Serve, one-row /predict from 8 concurrent clients;
   the variant is pointed at another run (``raytrain serve --update``'s code path), then rolled back; every request
   must be answered 200.
5. **Tables larger than a replica**: a DLRM with Criteo Kaggle's 26 cardinalities (2.01 GiB of fp32 tables, trained
   on ``--criteo-rows`` synthetic lines) served from 4 fp32 shards (1 replica each) and from 2 int8 shards (2
   replicas each): peak RSS of every replica process (VmHWM, load included) against its rows' bytes plus an empty
   shard replica's measured in the same run; ``--shard-rows`` test rows through /predict against the whole model
   scored offline; one shard replica killed under one-row /predict load.

6. **Request paths**: one-row /predict at 16 concurrent clients on the demo model through Ray Serve's default HTTP
   proxy, its throughput-optimised mode (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: the ingress replica answers HTTP
   itself) and the HAProxy ingress, each arm a fresh process and Ray, alternating for ``--path-rounds``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def newest_run(base: Path) -> Path | None:
    runs = sorted(p.parent for p in base.glob("*/*/result.json"))
    return runs[-1] if runs else None


def train(job: str, work: Path, overrides: list[str]) -> Path:
    """The newest finished run of ``job`` under ``work``, trained here if there is none."""
    import subprocess
    import sys

    base = work / Path(job).stem
    found = newest_run(base)
    if found is not None:
        return found
    subprocess.run([sys.executable, "-m", "raytrain.cli.main", "run", str(ROOT / job), f"storage={base}", *overrides],
                   check=True)
    found = newest_run(base)
    assert found is not None, f"{job}: no run under {base}"
    return found


def quantized_member(member, dtype: str):
    from raytrain.models.build import table_name
    from raytrain.serve.quantize import quantize_tables, table_storage

    model = member.model
    module = model.module if dtype == "none" else quantize_tables(
        _fresh(member).model.module, {table_name(f.name): dtype for f in model.schema.sparse})
    loaded = dataclasses.replace(model, module=module)
    return dataclasses.replace(member, model=loaded), sum(t["bytes"] for t in table_storage(module).values())


def _fresh(member):
    from raytrain.ensemble.members import Member
    from raytrain.train.export import load_model

    return Member(member.name, member.run_dir, member.checkpoint, load_model(member.run_dir, member.checkpoint))


def quantization(run: Path, label: str, goals: list) -> None:
    from sklearn.metrics import roc_auc_score

    from raytrain.ensemble.members import load_member, score

    member = load_member(run)
    logits, labels = score(member, "test")
    auc = roc_auc_score(labels, logits)
    _, fp32_bytes = quantized_member(member, "none")
    print(f"{label}: fp32 test AUC {auc:.5f} over {len(labels):,} rows, tables {fp32_bytes / 2**20:.1f} MiB")
    for dtype, max_drop, max_ratio in (("int8", 0.001, 0.33), ("int4", 0.003, 0.20)):
        q, nbytes = quantized_member(member, dtype)
        q_logits, _ = score(q, "test")
        q_auc = roc_auc_score(labels, q_logits)
        drop, ratio = auc - q_auc, nbytes / fp32_bytes
        print(f"{label}: {dtype} test AUC {q_auc:.5f} (change {q_auc - auc:+.5f}), tables {nbytes / 2**20:.1f} MiB "
              f"({ratio:.3f}x fp32), max |logit change| {np.abs(q_logits - logits).max():.4f}")
        goals.append((f"{label}_{dtype}_auc_drop", f"{drop:.5f}", f"<={max_drop}", drop <= max_drop))
        goals.append((f"{label}_{dtype}_table_bytes_ratio", f"{ratio:.3f}", f"<={max_ratio}", ratio <= max_ratio))


def sequential_quantization(run: Path, goals: list) -> None:
    """The sequential model's test NDCG@10 (the whole catalogue ranked for each test user) with its item table at
    fp32, int8 and int4, the same users, and the table's bytes."""
    from raytrain.data.sequences import leave_one_out
    from raytrain.serve.quantize import quantize_tables, table_storage
    from raytrain.train.sequential.load import load_sequential
    from raytrain.train.sequential.ranking import evaluate

    _, model, seqs = load_sequential(run)
    split = leave_one_out(seqs)
    ndcg = evaluate(model, split, "test")["ndcg@10"]
    fp32_bytes = table_storage(model)["t_item"]["bytes"]
    print(f"hstu_ml100k: fp32 test NDCG@10 {ndcg:.5f} over {len(split.test_target):,} users, item table "
          f"{fp32_bytes / 2**10:.0f} KiB")
    for dtype in ("int8", "int4"):
        q = quantize_tables(load_sequential(run)[1], {"t_item": dtype})
        q_ndcg, nbytes = evaluate(q, split, "test")["ndcg@10"], table_storage(q)["t_item"]["bytes"]
        change = (q_ndcg - ndcg) / ndcg
        print(f"hstu_ml100k: {dtype} test NDCG@10 {q_ndcg:.5f} ({100 * change:+.2f}%), item table "
              f"{nbytes / 2**10:.0f} KiB ({nbytes / fp32_bytes:.3f}x fp32)")
        if dtype == "int8":
            goals.append(("hstu_ml100k_int8_ndcg_rel_drop", f"{-change:.4f}", "<=0.02", -change <= 0.02))
            goals.append(("hstu_ml100k_int8_table_bytes_ratio", f"{nbytes / fp32_bytes:.3f}", "<=0.33",
                          nbytes / fp32_bytes <= 0.33))


def two_tower_parts(run: Path):
    """(model, store, item tower inputs of every known item, user vectors of every known user)."""

    from raytrain.serve.features import FeatureStore, prepared_rows
    from raytrain.train.export import load_model

    model = load_model(run)
    store = FeatureStore(model.schema, prepared_rows(model.spec.data))
    net = model.module.model.net
    items = store.known_items
    users = np.flatnonzero(store.known["user"])
    rows = store.parse([{store.user_key: int(u), store.item_key: int(items[i % len(items)])}
                        for i, u in enumerate(users)], where="users")
    with torch.inference_mode():
        batch = rows.columns.batch(torch.arange(len(users)))
        user_vectors = net.towers(batch.sparse)[0].float().numpy()
        item_rows = store.parse([{store.user_key: int(users[0]), store.item_key: int(i)} for i in items], where="items")
        pooled = net.embedding_bag_collection(item_rows.columns.batch(torch.arange(len(items))).sparse).to_dict()
        inputs = torch.cat([pooled[n] for n in net.item_features], dim=1)
    return model, store, inputs, user_vectors


def synthetic_catalogue(net, inputs: torch.Tensor, n: int, seed: int = 0) -> np.ndarray:
    """``n`` item vectors from the trained item tower: real items' tower inputs moved by noise."""
    g = torch.Generator().manual_seed(seed)
    spread = inputs.std(dim=0, keepdim=True)
    out = []
    with torch.inference_mode():
        for lo in range(0, n, 65536):
            m = min(65536, n - lo)
            base = inputs[torch.randint(0, inputs.shape[0], (m,), generator=g)]
            out.append(net.item_tower(base + 0.5 * spread * torch.randn(base.shape, generator=g)).float().numpy())
    return np.concatenate(out)


def retrieval(run: Path, n_items: int, n_queries: int, goals: list) -> None:
    from raytrain.kernels import topk_scores

    from raytrain.serve.retrieval import ItemIndex
    from raytrain.spec.serve import RetrievalSpec

    model, _, inputs, users = two_tower_parts(run)
    t0 = time.perf_counter()
    vectors = synthetic_catalogue(model.module.model.net, inputs, n_items)
    print(f"catalogue: {n_items:,} items x {vectors.shape[1]} from the item tower in {time.perf_counter() - t0:.1f}s; "
          f"{len(users)} users' vectors as queries")
    queries = users[np.random.default_rng(1).choice(len(users), n_queries, replace=len(users) < n_queries)]
    ids = np.arange(n_items)
    index = ItemIndex(vectors, ids, RetrievalSpec(index="ivf"))
    exact = ItemIndex(vectors, ids, RetrievalSpec(index="exact"))  # what serves catalogues below exact_below
    print(f"IVF index: {index.describe()}")
    items_t = torch.from_numpy(vectors)
    truth, found = [], []
    exact_s = ann_s = fused_s = 0.0
    for lo in range(0, n_queries, 20):  # blocks of 20 queries, the paths alternating
        block = queries[lo:lo + 20]
        t = time.perf_counter()
        for q in block:
            truth.append(exact.search(q[None], 100)[1][0])
        exact_s += time.perf_counter() - t
        t = time.perf_counter()
        for q in block:
            found.append(index.search(q[None], 100)[1][0])
        ann_s += time.perf_counter() - t
        t = time.perf_counter()
        for q in block:  # the fused kernel, which the exact path uses for large batches of queries
            topk_scores(torch.from_numpy(q[None]), items_t, 100)
        fused_s += time.perf_counter() - t
    recall = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / 100 for a, b in zip(found, truth)]))
    speedup = exact_s / ann_s
    print(f"one query at a time, top 100 of {n_items:,}: exact path (score vector + topk) {n_queries / exact_s:,.1f} "
          f"queries/s, fused top-K kernel {n_queries / fused_s:,.1f}, IVF {n_queries / ann_s:,.1f} ({speedup:.1f}x the "
          f"exact path, {fused_s / ann_s:.1f}x the fused kernel); recall@100 {recall:.4f}; index build "
          f"{index.info.build_s:.1f}s")
    goals.append(("ann_recall_at_100_1m_items", f"{recall:.4f}", ">=0.98", recall >= 0.98))
    goals.append(("ann_vs_exact_queries_per_s", f"{speedup:.1f}", ">=10", speedup >= 10))


def ndcg_at_10(ranked: list[int], positives: set[int]) -> float:
    dcg = sum(1 / np.log2(i + 2) for i, x in enumerate(ranked[:10]) if x in positives)
    ideal = sum(1 / np.log2(i + 2) for i in range(min(10, len(positives))))
    return dcg / ideal


def two_stage(ranker_run: Path, two_tower_run: Path, n_users: int, goals: list) -> None:
    """NDCG@10 of the test split's positives: the ranker over every unseen item against the two-tower's 200 unseen
    items ranked by the ranker."""
    import pyarrow.parquet as pq

    from raytrain.data import prepare
    from raytrain.ensemble.members import load_member
    from raytrain.serve.features import FeatureStore, prepared_rows
    from raytrain.serve.retrieval import ItemIndex
    from raytrain.spec.serve import RetrievalSpec

    model, store, inputs, _ = two_tower_parts(two_tower_run)
    net = model.module.model.net
    with torch.inference_mode():
        item_vectors = net.item_tower(inputs).float().numpy()
    index = ItemIndex(item_vectors, store.known_items, RetrievalSpec(index="exact"))
    ranker = load_member(ranker_run).model
    prepared = prepare(ranker.spec.data)

    rstore = FeatureStore(ranker.schema, prepared_rows(ranker.spec.data))
    train = pq.read_table(prepared.paths["train"][0]).select(["user_id", "item_id"]).to_pandas()
    test = pq.read_table(prepared.paths["test"][0]).select(["user_id", "item_id", "label"]).to_pandas()
    seen = train.groupby("user_id")["item_id"].apply(set).to_dict()
    positives = test[test.label > 0.5].groupby("user_id")["item_id"].apply(set).to_dict()
    users = sorted(positives)[:n_users]
    exact, staged = [], []
    for u in users:
        unseen = [int(i) for i in rstore.known_items if int(i) not in seen.get(u, set())]
        cols = rstore.parse([{"user_id": u, "item_id": i} for i in unseen], where="rank").columns
        with torch.inference_mode():
            _, logits = ranker.module(cols.batch(torch.arange(len(unseen))))
        score = dict(zip(unseen, logits.numpy().tolist()))
        exact.append(ndcg_at_10(sorted(unseen, key=lambda i: -score[i]), positives[u]))
        urow = store.parse([{store.user_key: u, store.item_key: 0}], where="user").columns
        with torch.inference_mode():
            q = net.towers(urow.batch(torch.arange(1)).sparse)[0].float().numpy()
        _, cand = index.search(q, 200, [np.array(sorted(seen.get(u, set())), dtype=np.int64)])
        cand_items = [int(i) for i in cand[0] if i >= 0]
        staged.append(ndcg_at_10(sorted(cand_items, key=lambda i: -score[i]), positives[u]))
    e, s = float(np.mean(exact)), float(np.mean(staged))
    ratio = s / e
    print(f"two stages on {len(users)} test users: ranker over every unseen item NDCG@10 {e:.4f}; two-tower top 200 "
          f"then ranker {s:.4f} ({ratio:.3f}x)")
    goals.append(("two_stage_vs_exact_ndcg_at_10", f"{ratio:.3f}", ">=0.99", ratio >= 0.99))


def swap(run: Path, other: Path, seconds: float, goals: list) -> None:
    """One-row /predict at 8 concurrent clients for ``seconds``; a third of the way in the variant is pointed at
    ``other`` (raytrain.serve.runner.update), two thirds in it is rolled back. Failed requests: any but a 200."""
    import asyncio
    import sys
    import threading

    import ray
    from ray import serve

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serve_load import drive, free_port, test_bodies

    from raytrain.serve.runner import deploy, update
    from raytrain.spec import parse_spec

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    port = free_port()

    def spec_of(r: Path):
        return parse_spec({"name": "serve-scale-swap", "kind": "serve", "storage": "/tmp/raytrain-serve-scale-swap",
                           "serve": {"variants": {"a": {"run": str(r)}}, "port": port, "request_log": False}})

    url = deploy(spec_of(run))["url"] + "/predict"
    bodies = test_bodies(str(run), 100_000, 1)
    asyncio.run(drive(url, bodies[:200], 8, 20.0))  # warm-up
    swaps: list[float] = []

    def operator() -> None:
        time.sleep(seconds / 3)
        t = time.perf_counter()
        update(spec_of(other))
        swaps.append(time.perf_counter() - t)
        time.sleep(max(0.0, seconds / 3 - swaps[-1]))
        t = time.perf_counter()
        update(spec_of(other), rollback=True)
        swaps.append(time.perf_counter() - t)

    op = threading.Thread(target=operator)
    op.start()
    res = asyncio.run(drive(url, bodies, 8, seconds))
    op.join()
    serve.shutdown()
    ray.shutdown()
    failed = res["requests"] - res["ok"]
    print(f"swap under load: {res['requests']:,} requests in {res['wall_s']:.0f}s ({res['req_per_s']:.0f}/s, p99 "
          f"{res['p99_ms']:.0f} ms), {failed} not answered 200; update took {swaps[0]:.1f}s, rollback {swaps[1]:.1f}s")
    goals.append(("swap_failed_requests", str(failed), "==0", failed == 0 and len(swaps) == 2))


def replica_peaks(app: str) -> dict[str, int]:
    """deployment -> the largest peak RSS (VmHWM) among the application's live replica processes."""
    from ray._private import state  # the GCS's actor table (pids) without the dashboard's state API

    out: dict[str, int] = {}
    for a in state.actors().values():
        name = a.get("Name") or ""
        if not name.startswith(f"SERVE_REPLICA::{app}#") or a.get("State") != "ALIVE" or not a.get("Pid"):
            continue
        deployment = name.split("#")[1]
        try:
            status = Path(f"/proc/{a['Pid']}/status").read_text()
        except OSError:
            continue
        hwm = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
        out[deployment] = max(out.get(deployment, 0), hwm)
    return out


def sharded(run: Path, n_rows: int, goals: list) -> None:
    """The Criteo-shaped DLRM served from table shards: peak RSS of every serving process (load included) against
    its rows' bytes plus an empty shard replica's, predictions against the whole model, a shard replica killed
    under load."""
    import asyncio
    import sys
    import threading

    import ray
    from ray import serve

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serve_load import drive, free_port

    from raytrain.ensemble.members import load_member, score, split_table
    from raytrain.serve.refs import MemberRef
    from raytrain.serve.runner import deploy
    from raytrain.serve.shards import EmbeddingShard
    from raytrain.serve.sources import resolve
    from raytrain.spec import parse_spec

    member = load_member(run)
    names = [f.name for f in member.model.schema.sparse] + list(member.model.schema.dense)
    table = split_table(member, "test").slice(0, n_rows)
    whole, _ = score(member, "test")
    whole = 1 / (1 + np.exp(-whole[:n_rows]))
    fp32_bytes = sum(f.cardinality for f in member.model.schema.sparse) * member.model.spec.model.embedding_dim * 4
    del member
    rows = table.select(names).to_pylist()
    print(f"sharded: the model's tables are {fp32_bytes / 2**30:.2f} GiB fp32")
    ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    ref = resolve("x", parse_spec({"name": "x", "kind": "serve", "serve": {"variants": {"x": {"run": str(run)}}}}
                                  ).serve.variants["x"]).members[0]
    serve.run(EmbeddingShard.options(name="empty", ray_actor_options={"num_cpus": 0.25}).bind(  # type: ignore
        MemberRef(ref.name, ref.run_dir, ref.checkpoint), [], {}, 1), name="empty-shard", route_prefix=None)
    empty = replica_peaks("empty-shard")["empty"]
    serve.delete("empty-shard")
    print(f"an empty shard replica (what a shard imports: torch and Ray Serve): peak RSS {empty / 2**30:.3f} GiB")

    def app(name: str, variant: dict, replicas: int):
        spec = parse_spec({"name": name, "kind": "serve", "storage": "/tmp/raytrain-serve-scale-shards", "serve": {
            "variants": {"x": {"run": str(run), **variant}}, "port": port, "replicas": replicas,
            "request_log": False, "max_request_rows": 1000, "route_prefix": f"/{name}"}})
        return spec, deploy(spec)["url"]

    for label, variant, limit in (("4_fp32", {"shards": 4}, 1.0), ("2_int8", {"shards": 2, "quantize": "int8"}, 0.75)):
        name = f"shards-{label.replace('_', '-')}"
        spec, url = app(name, variant, 2 if label == "2_int8" else 1)
        meta = json.loads(urllib.request.urlopen(url + "/metadata", timeout=120).read())["models"][0]
        peaks = replica_peaks(name)
        worst = max(peaks.values())
        print(f"{label}: peak RSS per deployment (GiB) " + ", ".join(f"{d} {v / 2**30:.3f}" for d, v in
                                                                      sorted(peaks.items())))
        goals.append((f"sharded_{label}_peak_rss_gib", f"{worst / 2**30:.3f}", f"<={limit}", worst <= limit * 2**30))
        over = []
        for i, s in enumerate(meta["shards"]):
            expected = s["table_bytes"] + empty
            peak = peaks.get(f"member-x-0-shard-{i}", 0)
            over.append(peak / expected - 1)
            print(f"  shard {i}: rows {sum(s['rows'].values()):,}, table bytes {s['table_bytes'] / 2**30:.3f} GiB, "
                  f"peak {peak / 2**30:.3f} GiB = {peak / expected:.3f}x (its rows + an empty replica)")
        goals.append((f"sharded_{label}_shard_rss_over_rows_plus_empty", f"{max(over):.3f}", "<=0.15", max(over) <= 0.15))
        if label == "4_fp32":
            got = []
            for lo in range(0, len(rows), 1000):
                req = urllib.request.Request(url + "/predict", json.dumps({"rows": rows[lo:lo + 1000]}).encode(),
                                             {"Content-Type": "application/json"})
                got += json.loads(urllib.request.urlopen(req, timeout=300).read())["probabilities"]
            diff = float(np.abs(np.array(got) - whole).max())
            print(f"  {len(got):,} rows: max |sharded - whole| {diff:.2e}")
            goals.append(("sharded_equals_unsharded_max_abs", f"{diff:.1e}", "<=1e-6", diff <= 1e-6))
        else:
            bodies = [json.dumps({"rows": [r]}).encode() for r in rows[:5000]] * 4
            killed: list[str] = []

            def kill() -> None:
                time.sleep(5.0)
                victims = [a for a in ray.util.list_named_actors(all_namespaces=True)
                           if a["namespace"] == "serve" and f"::{name}#member-x-0-shard-0#" in a["name"]]
                ray.kill(ray.get_actor(victims[0]["name"], namespace="serve"), no_restart=True)
                killed.append(victims[0]["name"])

            t = threading.Thread(target=kill)
            t.start()
            res = asyncio.run(drive(url + "/predict", bodies, 8, 20.0))
            t.join()
            failed = res["requests"] - res["ok"]
            print(f"  shard replica killed under load: {res['requests']:,} requests, {failed} not answered 200")
            goals.append(("shard_kill_failed_requests", str(failed), "==0", failed == 0 and bool(killed)))
        serve.delete(name)
    serve.shutdown()
    ray.shutdown()


REQUEST_PATHS = {"http": {}, "throughput_optimized": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
                 "haproxy": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}}
# haproxy is what serve.request_path: haproxy sets (raytrain.serve.runner.HAPROXY_ENV)


def path_arm(run: str, path: str, seconds: float) -> None:
    """One request-path arm in this process (Serve reads its settings from the environment when it starts): the
    demo model, one-row /predict from 16 concurrent clients; prints a JSON line."""
    import asyncio
    import os
    import sys

    os.environ.update(REQUEST_PATHS[path])
    import ray
    from ray import serve

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serve_load import drive, free_port, test_bodies

    from raytrain.serve.runner import deploy
    from raytrain.spec import parse_spec

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    spec = parse_spec({"name": "serve-path", "kind": "serve", "storage": "/tmp/raytrain-serve-path", "serve": {
        "variants": {"a": {"run": run}}, "port": free_port(), "max_batch_size": 32}})
    url = deploy(spec)["url"] + "/predict"
    bodies = test_bodies(run, 100_000, 1)
    asyncio.run(drive(url, bodies[:300], 16, 15.0))  # warm-up
    res = asyncio.run(drive(url, bodies, 16, seconds))
    bad = asyncio.run(_bad_request(url))
    serve.shutdown()
    print("ARM " + json.dumps({"req_per_s": res["req_per_s"], "p99_ms": res["p99_ms"], "failed": res["failed"],
                               "bad_request_status": bad}), flush=True)


async def _bad_request(url: str) -> int:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=b'{"rows": [{"user_id": "x"}]}',
                                headers={"Content-Type": "application/json"}) as r:
            return r.status


def request_paths(run: Path, rounds: int, seconds: float, goals: list) -> None:
    """One-row /predict requests/s of Serve's request paths, each arm a fresh process and Ray, alternating."""
    import statistics
    import subprocess
    import sys

    found: dict[str, list[dict]] = {p: [] for p in REQUEST_PATHS}
    for _ in range(rounds):
        for path in REQUEST_PATHS:
            out = subprocess.run([sys.executable, __file__, "--path-arm", str(run), path, str(seconds)],
                                 capture_output=True, text=True, timeout=900)
            line = next((x for x in out.stdout.splitlines() if x.startswith("ARM ")), None)
            if line is None:
                tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
                print(f"request path {path}: no result ({' | '.join(tail)})")
                continue
            found[path].append(json.loads(line[4:]))
    base = statistics.median(r["req_per_s"] for r in found["http"]) if found["http"] else float("nan")
    best, best_ratio = "http", 1.0
    for path, results in found.items():
        if not results:
            continue
        rate = statistics.median(r["req_per_s"] for r in results)
        rates = ", ".join(f"{r['req_per_s']:.0f}" for r in results)
        print(f"request path {path}: {rate:.0f} requests/s (median of {len(results)}: {rates}), p99 "
              f"{statistics.median(r['p99_ms'] for r in results):.0f} ms, failed {sum(r['failed'] for r in results)}, "
              f"a bad row answered {results[0]['bad_request_status']}; {rate / base:.2f}x http")
        if path != "http" and rate / base > best_ratio and all(r["bad_request_status"] == 422 for r in results):
            best, best_ratio = path, rate / base
    goals.append(("fast_path_vs_http_requests_per_s", f"{best_ratio:.2f}", ">=2.0", best_ratio >= 2.0))
    print(f"fastest request path keeping 4xx replies: {best}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/raytrain-serve-scale")
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--users", type=int, default=300, help="two-stage: test users evaluated")
    p.add_argument("--swap-seconds", type=float, default=45.0, help="swap: seconds of load (update, then rollback)")
    p.add_argument("--shard-rows", type=int, default=10_000, help="sharded: test rows compared with the whole model")
    p.add_argument("--sections", default="quantize,retrieval,swap,shards,paths",
                   help="which parts to run (comma-separated); shards trains 2 GiB of tables once")
    p.add_argument("--criteo-rows", type=int, default=1_000_000, help="synthetic log lines (8 days)")
    p.add_argument("--criteo-table-rows", type=int, default=500_000, help="rows per categorical table at most")
    p.add_argument("--path-rounds", type=int, default=2, help="request paths: rounds of arms")
    p.add_argument("--path-seconds", type=float, default=30.0, help="request paths: seconds of load per arm")
    p.add_argument("--path-arm", nargs=3, metavar=("RUN", "PATH", "SECONDS"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.path_arm:
        path_arm(a.path_arm[0], a.path_arm[1], float(a.path_arm[2]))
        return
    work = Path(a.work)
    goals: list[tuple[str, str, str, bool]] = []
    torch.set_num_threads(2)

    dcn = train("jobs/train_ml100k.yaml", work, [])
    # the model the swap points the served variant at: the same job, one epoch (another run, another checkpoint)
    dcn_other = train("jobs/train_ml100k.yaml", work / "other", ["train.epochs=1"])
    two_tower = train("jobs/train_ml100k_two_tower.yaml", work, ["model.tower=[128, 64]"])  # d 64 item vectors
    logs = work / "criteo-logs"
    if not (logs / "day_7").exists():
        import subprocess
        import sys

        subprocess.run([sys.executable, "-m", "raytrain.cli.main", "data", "synth-criteo", str(logs),
                        "--rows", str(a.criteo_rows), "--days", "8"], check=True)
    criteo = train("jobs/train_criteo_synth.yaml", work, [
        f"data.paths={{train: '{logs}/day_[0-5]*', validation: '{logs}/day_6*', test: '{logs}/day_7*'}}",
        f"data.criteo.max_num_embeddings={a.criteo_table_rows}"])

    sections = set(a.sections.split(","))
    if "quantize" in sections:
        quantization(dcn, "dcn_v2_ml100k", goals)
        quantization(criteo, "dlrm_criteo", goals)
        sequential_quantization(train("jobs/pretrain_hstu_ml100k.yaml", work, []), goals)
    if "retrieval" in sections:
        retrieval(two_tower, a.items, a.queries, goals)
        two_stage(dcn, two_tower, a.users, goals)
    if "swap" in sections:
        swap(dcn, dcn_other, a.swap_seconds, goals)
    if "shards" in sections:
        big_logs = work / "criteo-big-logs"
        if not (big_logs / "day_7").exists():
            import subprocess
            import sys

            subprocess.run([sys.executable, "-m", "raytrain.cli.main", "data", "synth-criteo", str(big_logs),
                            "--rows", str(a.criteo_rows), "--days", "8"], check=True)
        big = train("jobs/train_criteo_synth.yaml", work / "big", [
            f"data.paths={{train: '{big_logs}/day_[0-5]*', validation: '{big_logs}/day_6*', test: '{big_logs}/day_7*'}}",
            "data.criteo.max_num_embeddings=null"])  # Criteo Kaggle's cardinalities: 2.01 GiB of fp32 tables
        sharded(big, a.shard_rows, goals)
    if "paths" in sections:
        request_paths(dcn, a.path_rounds, a.path_seconds, goals)
    for name, measured, target, ok in goals:
        print(f"GOAL {name} {measured} {target} {'met' if ok else 'missed'}")


if __name__ == "__main__":
    main()
