"""The Ray Serve application: one deployment per member model, one ingress that validates, routes and combines.

Members of a variant are scored concurrently (one handle call each, awaited together). With batching on,
the ingress merges concurrent requests (``@serve.batch``) and makes one call per member for the whole
batch: on these models a Ray call costs several times a forward pass, so merging only the forward passes
inside the members saved almost nothing (see docs/serving.md). The ingress assigns
every row to a variant by a hash of its sticky key (the user id), so a user always sees the same variant
and the shares over many users follow ``serve.traffic``: Ray Serve has no traffic split between model
versions of its own.
"""

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from ..bandit import slates
from ..data.batches import Columns
from .decisions import DecisionLog
from .features import FeatureStore, RequestError, concat_wire, from_wire, to_wire
from .sources import MemberRef, ResolvedVariant

log = logging.getLogger("ray.serve")
# a member deployment that cannot answer now (replicas dead, restarting, or at their request limit): retryable
_UNAVAILABLE = (RayActorError, ActorUnavailableError, BackPressureError, DeploymentUnavailableError,
                ReplicaUnavailableError)


def bucket(salt: str, key) -> float:
    """A stable point in [0, 1) for a sticky key: the same user, the same variant, on every replica and restart."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def forced_variant(cfg, body: dict, headers) -> str | None:
    """The variant a request chose for itself, if the application lets it (``serve.force_variant``): the body's
    'variant' field, or the ``serve.force_header`` header; None when it chose none. Refused (403) when forcing is
    off or goes through the other channel, so a client cannot bypass the traffic split unnoticed."""
    from_body = body.get("variant")
    from_header = headers.get(cfg.force_header) if cfg.force_variant == "header" else None
    if from_body is not None and cfg.force_variant != "body":
        how = ("forcing is off on this application (serve.force_variant)" if cfg.force_variant == "off"
               else f"this application takes it from the {cfg.force_header} header")
        raise RequestError(f"variant: a request may not choose its variant: {how}", 403)
    chosen = from_body if from_body is not None else from_header
    if chosen is None:
        return None
    if not isinstance(chosen, str) or chosen not in cfg.variants:
        raise RequestError(f"variant: {chosen!r} is not served; variants: {', '.join(cfg.variants)}")
    return chosen


def assign(shares: dict[str, float], salt: str, key) -> str:
    point, acc = bucket(salt, key), 0.0
    names = list(shares)
    for name in names:
        acc += shares[name]
        if point < acc:
            return name
    return names[-1]


@serve.deployment
class MemberModel:
    """One trained model, loaded unsharded from its run directory; one forward pass per call.

    Batching happens upstream: the ingress merges concurrent requests and sends each member one call
    per batch (``Ingress._scores_batched``), which saves the per-call cost (a Ray actor call costs
    several times a forward pass of these models) as well as forward passes."""

    def __init__(self, ref: MemberRef, threads: int):
        from ..train.export import load_model

        torch.set_num_threads(threads)
        self.ref = ref
        self.model = load_model(ref.run_dir, ref.checkpoint)
        self.forward_passes = 0

    async def score(self, rows: dict) -> np.ndarray:
        """Logits of parsed rows (``features.to_wire``)."""
        self.forward_passes += 1
        cols = from_wire(self.model.schema, [rows])
        with torch.inference_mode():
            _, logits = self.model.module(cols.batch(torch.arange(len(cols))))
        return logits.double().numpy()

    def info(self) -> dict:
        m = self.model
        return {**asdict(self.ref), "epoch": m.epoch, "arch": m.spec.model.arch,
                "embedding_dim": m.spec.model.embedding_dim,
                "parameters": int(sum(p.numel() for p in m.module.parameters())),
                "forward_passes": self.forward_passes}


api = FastAPI(title="raytrain serving")


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(self, config: dict, variants: list[dict], handles: dict, decision_log=None):
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ..data import prepare
        from ..ensemble.combine import Combiner
        from ..spec.schema import DataSpec, ServeSpec

        self.cfg = ServeSpec.model_validate(config["serve"])
        self.name = config["name"]
        self.variants = [ResolvedVariant(v["name"], [MemberRef(**m) for m in v["members"]], v["combiner"],
                                         v["source"]) for v in variants]
        self.combiners = {v.name: (Combiner.from_dict(v.combiner) if v.combiner else None) for v in self.variants}
        self.handles = handles  # checkpoint path -> DeploymentHandle of its MemberModel
        prepared = prepare(DataSpec.model_validate(config["data"]))
        splits = {s: pa.concat_tables([pq.read_table(p) for p in prepared.paths[s]]) for s in prepared.paths}
        recent = pa.concat_tables([splits["validation"], splits["test"]])
        table = pa.concat_tables([splits["train"], recent])
        self.store = FeatureStore(prepared.schema, table, recent, user_key=self.cfg.sticky_key)
        self.started = time.time()
        self.requests = {"predict": 0, "recommend": 0, "feedback": 0, "rejected": 0, "forced": 0, "failed": 0}
        self.decision_log = decision_log  # the DecisionLog handle: every request, exploring decisions, feedback
        self.rngs = {name: np.random.default_rng(v.explore.seed) for name, v in self.cfg.variants.items()
                     if v.explore is not None}
        self.batching = self.cfg.max_batch_size > 1
        self.merged = {"batches": 0, "requests": 0}  # what batching merged: requests per batch of member calls
        self.in_flight = 0  # /predict and /recommend requests being answered
        self._scores_batched.set_max_batch_size(self.cfg.max_batch_size)  # type: ignore[attr-defined]
        self._scores_batched.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)  # type: ignore[attr-defined]

    # ---- helpers ----------------------------------------------------------------------------------------

    async def _body(self, request: Request) -> dict:
        try:
            body = await request.json()
        except Exception:
            raise RequestError("body: not valid JSON", 400) from None
        if not isinstance(body, dict):
            raise RequestError(f"body: expected a JSON object, got {type(body).__name__}")
        return body

    def _variant(self, body: dict, request: Request) -> str | None:
        forced = forced_variant(self.cfg, body, request.headers)
        if forced is not None:
            self.requests["forced"] += 1
        return forced

    @contextmanager
    def _answering(self) -> Iterator[None]:
        """Counts the /predict and /recommend requests being answered (``in_flight``)."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def _scores(self, variant: str, cols: Columns) -> np.ndarray:
        """Probabilities of one variant for parsed rows: merged with concurrent requests' rows when batching.
        A request alone in the ingress goes straight through: waiting for company that is not coming would
        only add ``batch_wait_timeout_s`` to its latency."""
        rows = to_wire(cols)
        if self.batching and self.in_flight > 1:
            return await self._scores_batched((variant, rows))
        return await self._variant_scores(variant, rows)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _scores_batched(self, requests: list[tuple[str, dict]]) -> list[np.ndarray]:
        """Concurrent requests' rows, grouped by variant: one call per member of each variant for the whole
        group, then each request gets its own slice back."""
        out: list[np.ndarray] = [np.empty(0)] * len(requests)
        self.merged["batches"] += 1
        self.merged["requests"] += len(requests)
        groups: dict[str, list[int]] = {}
        for i, (variant, _) in enumerate(requests):
            groups.setdefault(variant, []).append(i)

        async def score_group(variant: str, idx: list[int]) -> None:
            parts = [requests[i][1] for i in idx]
            probs = await self._variant_scores(variant, concat_wire(parts))
            bounds = np.cumsum([0] + [len(p["dense"]) for p in parts])
            for i, a, b in zip(idx, bounds[:-1], bounds[1:]):
                out[i] = probs[a:b]

        await asyncio.gather(*(score_group(v, idx) for v, idx in groups.items()))
        return out

    async def _variant_scores(self, variant: str, rows: dict) -> np.ndarray:
        """Members of a variant scored concurrently, then combined."""
        v = next(x for x in self.variants if x.name == variant)

        async def call(ref: MemberRef) -> np.ndarray:
            handle = self.handles[ref.checkpoint]
            try:
                return await handle.score.remote(rows)
            except Exception as e:  # a replica died under us: one retry goes to a live (or restarted) replica
                log.warning("member %s failed (%s: %s); retrying once", ref.name, type(e).__name__, e)
                return await handle.score.remote(rows)

        logits = await asyncio.gather(*(call(m) for m in v.members))
        combiner = self.combiners[variant]
        if combiner is None:
            return 1.0 / (1.0 + np.exp(-logits[0]))
        return combiner.predict(np.stack(logits, axis=1))

    def _error(self, e: Exception) -> JSONResponse:
        """A bad request: its status and reason. A model really unavailable (its replicas dead, restarting or full):
        503, retry. Anything else is a bug: 500 with an id that finds its traceback in the log."""
        if isinstance(e, RequestError):
            self.requests["rejected"] += 1
            return JSONResponse({"error": str(e)}, status_code=e.status)
        if isinstance(e, _UNAVAILABLE):
            self.requests["rejected"] += 1
            log.warning("a model was unavailable: %s: %s", type(e).__name__, e)
            return JSONResponse({"error": f"a model was unavailable ({type(e).__name__}); retry"}, status_code=503)
        self.requests["failed"] += 1
        rid = uuid.uuid4().hex[:16]
        log.exception("request %s failed", rid)
        return JSONResponse({"error": f"internal error ({type(e).__name__}); request id {rid}", "request_id": rid},
                            status_code=500)

    # ---- endpoints --------------------------------------------------------------------------------------

    @api.post("/predict")
    async def predict(self, request: Request):
        with self._answering():
            return await self._predict(request)

    async def _predict(self, request: Request):
        try:
            body = await self._body(request)
            rows = body.get("rows")
            forced = self._variant(body, request)
            extra = sorted(set(body) - {"rows", "variant"})
            if extra:
                raise RequestError(f"body: unknown field(s) {', '.join(map(repr, extra))}; fields: rows, variant")
            if not isinstance(rows, list) or not rows:
                raise RequestError("rows: expected a non-empty list of objects")
            if len(rows) > self.cfg.max_request_rows:
                raise RequestError(f"rows: {len(rows)} rows, more than the {self.cfg.max_request_rows} allowed "
                                   "per request (serve.max_request_rows)", 413)
            key = self.store.user_key
            names = [forced or assign(self.cfg.shares, self.name, r.get(key) if isinstance(r, dict) else None)
                     for r in rows]
            groups: dict[str, list[int]] = {}
            for i, n in enumerate(names):
                groups.setdefault(n, []).append(i)
            parsed = {n: self.store.parse([rows[i] for i in idx], self.cfg.oov, where="rows")
                      for n, idx in groups.items()}
            probs = np.empty(len(rows))
            unknown: dict[str, int] = {}
            results = await asyncio.gather(*(self._scores(n, parsed[n].columns) for n in groups))
            for (n, idx), p in zip(groups.items(), results):
                probs[idx] = p
                for k, c in parsed[n].unknown.items():
                    unknown[k] = unknown.get(k, 0) + c
            rid = uuid.uuid4().hex
            await self._log_requests(rid, "predict", names, forced is not None,
                                     [r.get(key) for r in rows], [r.get(self.store.item_key) for r in rows])
        except Exception as e:
            return self._error(e)
        self.requests["predict"] += 1
        out = {"request_id": rid, "probabilities": probs.tolist(), "variants": names, "forced": forced is not None,
               "unknown_ids": unknown}
        if len(groups) == 1:
            out["variant"] = names[0]
        return out

    @api.post("/recommend")
    async def recommend(self, request: Request):
        with self._answering():
            return await self._recommend(request)

    async def _recommend(self, request: Request):
        try:
            body = await self._body(request)
            key, item_key = self.store.user_key, self.store.item_key
            allowed: set[str] = {key, "k", "candidates", "exclude_rated", "variant"}
            extra = sorted(set(body) - allowed)
            if extra:
                raise RequestError(f"body: unknown field(s) {', '.join(map(repr, extra))}; fields: "
                                   f"{', '.join(sorted(allowed))}")
            if key not in body:
                raise RequestError(f"body: missing field {key!r}")
            user = body[key]
            k = body.get("k", 10)
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.cfg.max_recommend_k:
                raise RequestError(f"k: expected an integer in [1, {self.cfg.max_recommend_k}], got {k!r}")
            candidates = body.get("candidates")
            if candidates is None:
                candidates = self.store.known_items.tolist()
            elif not isinstance(candidates, list) or not candidates:
                raise RequestError("candidates: expected a non-empty list of item ids")
            elif len(candidates) > 10 * self.cfg.max_request_rows:
                raise RequestError(f"candidates: {len(candidates)} ids, more than {10 * self.cfg.max_request_rows}",
                                   413)
            exclude = body.get("exclude_rated", False)
            if not isinstance(exclude, bool):
                raise RequestError(f"exclude_rated: expected true or false, got {exclude!r}")
            forced = self._variant(body, request)
            variant = forced or assign(self.cfg.shares, self.name, user)
            parsed = self.store.parse([{key: user, item_key: c} for c in candidates], self.cfg.oov, where="candidates")
            items = parsed.columns.ids[item_key].numpy()
            probs = await self._scores(variant, parsed.columns)
            if exclude and "user_rated_items" in self.store.values:
                uid = int(parsed.columns.ids[key][0])
                rated = set(self.store.values["user_rated_items"][uid]) - {0}  # type: ignore[index]
                probs = np.where(np.isin(items, list(rated)), -np.inf, probs)
            rid, decisions = uuid.uuid4().hex, list[dict]()
            if self.cfg.variants[variant].explore is not None:
                uid = int(parsed.columns.ids[key][0])
                out, decisions = self._explore(rid, variant, uid, items, probs, k, forced is not None)
            else:
                order = np.argsort(-probs, kind="stable")[:k]
                order = order[np.isfinite(probs[order])]
                out = {"request_id": rid, "items": [{item_key: int(items[i]), "score": float(probs[i])} for i in order]}
            # the decision (exploring) and the request are on record before the reply leaves
            await self._log_requests(rid, "recommend", [variant], forced is not None, [user],
                                     [[x[item_key] for x in out["items"]]], decisions)
        except Exception as e:
            return self._error(e)
        self.requests["recommend"] += 1
        return {key: user, "variant": variant, "forced": forced is not None, "unknown_ids": parsed.unknown, **out}

    async def _log_requests(self, rid: str, endpoint: str, variants: list[str], forced: bool, users: list,
                            items: list, decisions: list[dict] | None = None) -> None:
        """One request-log row per (request, user) from parallel lists (a variant, user and item or items per row):
        the items scored or shown to each user (what /feedback can reward, what abtest counts); and the exploring
        decisions, if any."""
        if self.decision_log is None:
            return
        per_user: dict[str, tuple[str, list[int]]] = {}
        for variant, user, item in zip(variants, users, items):
            entry = per_user.setdefault(str(user), (variant, []))
            entry[1].extend(i for i in (item if isinstance(item, list) else [item])
                            if isinstance(i, int) and not isinstance(i, bool) and -2**63 <= i < 2**63)
        now = time.time()
        rows = [{"request_id": rid, "time": now, "endpoint": endpoint, "variant": v, "forced": forced, "user": u,
                 "items": its} for u, (v, its) in per_user.items()]
        await self.decision_log.log.remote(decisions or [], rows)

    def _explore(self, rid: str, variant: str, uid: int, items: np.ndarray, probs: np.ndarray, k: int,
                 forced: bool) -> tuple[dict, list[dict]]:
        """A slate drawn by the variant's policy from its ``pool`` best candidates, and its decision rows: every
        position with its propensity (P(item at that position))."""
        ex = self.cfg.variants[variant].explore
        assert ex is not None
        eligible = np.flatnonzero(np.isfinite(probs))
        pool = eligible[np.argsort(-probs[eligible], kind="stable")[:ex.pool]]
        k = min(k, len(pool))
        if k == 0:
            raise RequestError("candidates: none left to recommend (all rated or excluded)")
        scores = probs[pool]
        try:
            marg = slates.marginals(ex.policy, scores, k, ex.epsilon, ex.temperature)
        except ValueError as e:
            raise RequestError(f"k: {e} (variant {variant} explores with {ex.policy})") from None
        slate = slates.sample(ex.policy, scores, k, self.rngs[variant], ex.epsilon, ex.temperature)
        now = time.time()
        policy = json.dumps(ex.model_dump(mode="json"), sort_keys=True)
        context = json.dumps(self.store.user_context(uid))
        cands, score_list = items[pool].tolist(), scores.tolist()
        rows = [{"request_id": rid, "time": now, "variant": variant, "forced": forced, "policy": policy, "user": uid,
                 "context": context, "position": p, "item": int(items[pool[i]]), "propensity": float(marg[i, p]),
                 "score": float(scores[i]), "candidates": cands, "scores": score_list,
                 "probabilities": marg[:, p].tolist()} for p, i in enumerate(slate)]
        item_key = self.store.item_key
        return {"request_id": rid, "policy": ex.policy,
                "items": [{item_key: r["item"], "score": r["score"], "position": r["position"],
                           "propensity": r["propensity"]} for r in rows]}, rows

    @api.post("/feedback")
    async def feedback(self, request: Request):
        """A reward for an item a /recommend reply showed or a /predict request scored: {"request_id", item id,
        "reward" (default 1)}; taken within serve.feedback_window_s."""
        try:
            body = await self._body(request)
            item_key = self.store.item_key
            allowed = {"request_id", item_key, "reward"}
            extra = sorted(set(body) - allowed)
            if extra:
                raise RequestError(f"body: unknown field(s) {', '.join(map(repr, extra))}; fields: "
                                   f"{', '.join(sorted(allowed))}")
            rid, item, reward = body.get("request_id"), body.get(item_key), body.get("reward", 1.0)
            if not isinstance(rid, str) or not rid:
                raise RequestError("request_id: expected the request_id string a /recommend reply gave")
            if isinstance(item, bool) or not isinstance(item, int):
                raise RequestError(f"{item_key}: expected an integer item id, got {item!r}")
            if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not np.isfinite(reward):
                raise RequestError(f"reward: expected a finite number, got {reward!r}")
            if self.decision_log is None:
                raise RequestError("request_id: this application keeps no request log (no run directory)", 404)
            status, message = await self.decision_log.record_feedback.remote(rid, item, float(reward))
            if status != 200:
                raise RequestError(message, status)
        except Exception as e:
            return self._error(e)
        self.requests["feedback"] += 1
        return {"request_id": rid, item_key: item, "reward": float(reward), "status": message}

    @api.get("/healthz")
    async def healthz(self):
        return {"status": "ok", "uptime_s": round(time.time() - self.started, 1)}

    @api.get("/metadata")
    async def metadata(self):
        infos = await asyncio.gather(*(h.info.remote() for h in self.handles.values()))
        return {
            "name": self.name,
            "models": infos,
            "variants": {v.name: {"source": v.source, "members": [m.name for m in v.members],
                                  "combine": (v.combiner or {}).get("kind"), "share": self.cfg.shares[v.name],
                                  "explore": self.cfg.explore_of(v.name)}
                         for v in self.variants},
            "sticky_key": self.cfg.sticky_key,
            "oov": self.cfg.oov,
            "batching": {"max_batch_size": self.cfg.max_batch_size,
                         "batch_wait_timeout_s": self.cfg.batch_wait_timeout_s, **self.merged},
            "max_request_rows": self.cfg.max_request_rows,
            "features": self.store.describe(),
            "requests": self.requests,
        }


def build_app(spec, variants: list[ResolvedVariant], log_dir: str | None = None):
    """The bound application: a MemberModel deployment per distinct checkpoint, then the ingress."""
    cfg = spec.serve
    scaling: dict = ({"autoscaling_config": cfg.autoscaling.model_dump()} if cfg.autoscaling is not None
                     else {"num_replicas": cfg.replicas})
    handles: dict[str, object] = {}
    for v in variants:
        for m in v.members:
            if m.checkpoint in handles:
                continue
            dep = MemberModel.options(  # type: ignore[attr-defined]
                name=f"member-{len(handles)}-{m.name}"[:60],
                ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
                max_ongoing_requests=max(cfg.max_ongoing_requests, 2 * cfg.max_batch_size), **scaling)
            handles[m.checkpoint] = dep.bind(m, cfg.torch_threads)
    config = {"name": spec.name, "serve": cfg.model_dump(mode="json"), "data": _data_of(variants)}
    payload = [{"name": v.name, "members": [asdict(m) for m in v.members], "combiner": v.combiner,
                "source": v.source} for v in variants]
    decision_log = None
    if log_dir is None and any(v.explore is not None for v in cfg.variants.values()):
        raise ValueError("serve: an exploring variant needs a run directory for its decision logs")
    if log_dir is not None:
        decision_log = DecisionLog.bind(log_dir, cfg.log_flush_s, cfg.feedback_window_s,  # type: ignore[attr-defined]
                                        cfg.max_open_decisions)
    return Ingress.options(  # type: ignore[attr-defined]
        num_replicas=cfg.ingress_replicas, ray_actor_options={"num_cpus": cfg.ingress_num_cpus},
        max_ongoing_requests=cfg.max_ongoing_requests,
    ).bind(config, payload, handles, decision_log)


def _data_of(variants: list[ResolvedVariant]) -> dict:
    """The data spec every member was trained on (one feature schema for the whole application)."""
    from ..errors import CheckpointError
    from ..spec import load_spec

    docs = {}
    for v in variants:
        for m in v.members:
            docs[m.name] = load_spec(f"{m.run_dir}/spec.yaml").data.model_dump(mode="json")
    first = next(iter(docs.values()))
    for name, d in docs.items():
        if json.dumps(d, sort_keys=True) != json.dumps(first, sort_keys=True):
            raise CheckpointError(f"serve: member {name} was trained on other data than the rest "
                                  "(one application serves one feature schema)")
    return first
