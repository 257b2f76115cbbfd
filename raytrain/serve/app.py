"""The ingress of the Ray Serve application: it validates requests (``requests``), routes them to variants
(``routing``), scores and batches (``scoring``) through the member deployments (``members``, ``shards``), retrieves
(``retrieval`` in the members), explores (``explore``) and logs every request and decision (``decisions``). The
deployment graph is put together in ``build``."""

import asyncio
import logging
import time
import uuid

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from .cold_start import ItemText
from .decisions import LogBuffer, request_rows
from .explore import explore_slate, top_k
from .features import FeatureStore, RequestError, _key, is_registered, prepared_rows
from .refs import MemberRef, ResolvedVariant
from .requests import FeedbackRequest, PredictRequest, RecommendRequest, install_error_replies
from .routing import assign, forced_variant, group_rows
from .scoring import Scorer
from .wire import to_wire

log = logging.getLogger("ray.serve")
# a member deployment that cannot answer now (replicas dead, restarting, or at their request limit): retryable
_UNAVAILABLE = (RayActorError, ActorUnavailableError, BackPressureError, DeploymentUnavailableError,
                ReplicaUnavailableError)

api = FastAPI(title="raytrain serving")
# this replica's request counts (one ingress per replica process); FastAPI's own refusals count as rejected too
COUNTS = {"predict": 0, "recommend": 0, "feedback": 0, "rejected": 0, "forced": 0, "failed": 0}
install_error_replies(api, COUNTS)


@serve.deployment
@serve.ingress(api)
class Ingress(Scorer):
    def __init__(self, config: dict, variants: list[dict], handles: dict, decision_log=None):

        from ..data.schema import FeatureSchema
        from ..ensemble.combine import Combiner
        from ..spec.sections import DataSpec
        from ..spec.serve import ServeSpec

        self.cfg = ServeSpec.model_validate(config["serve"])
        self.name = config["name"]
        self.variants = [ResolvedVariant(v["name"], [MemberRef(**m) for m in v["members"]], v["combiner"],
                                         v["source"]) for v in variants]
        self.combiners = {v.name: (Combiner.from_dict(v.combiner) if v.combiner else None) for v in self.variants}
        self.handles = handles  # MemberRef.key -> DeploymentHandle of its MemberModel
        # variants that retrieve from their own index: a single two-tower or content model (MemberRef.retrieval)
        self.retrievers = {v.name: v.members[0].key for v in self.variants
                           if len(v.members) == 1 and v.members[0].retrieval}
        schema = FeatureSchema.from_dict(config["schema"])
        table = None
        if _key(schema, "user", self.cfg.sticky_key) is not None or _key(schema, "item", "item_id") is not None:
            # the feature store's rows: each user's and item's latest features (not for Criteo-format models,
            # whose rows carry every feature and whose logs may be terabytes)
            table = prepared_rows(DataSpec.model_validate(config["data"]))
        hashed = frozenset(f.name for f in schema.sparse) if config["data"].get("source") == "criteo" else frozenset()
        data_spec = DataSpec.model_validate(config["data"])
        self.store = FeatureStore(schema, table, user_key=self.cfg.sticky_key, hashed=hashed,
                                  text=ItemText.of(data_spec, list(schema.dense)))
        if self.cfg.new_items is not None:
            from .registry import NewItems

            self.store.new_items = NewItems(self.cfg.new_items, self.cfg.new_items_check_s, self.store.known_items)
        self.started = time.time()
        self.requests = COUNTS
        self.decision_log = decision_log  # the DecisionLog handle: every request, exploring decisions, feedback
        self.log_buffer = LogBuffer(decision_log) if decision_log is not None else None
        self.rngs = {name: np.random.default_rng(v.explore.seed) for name, v in self.cfg.variants.items()
                     if v.explore is not None}
        self.init_scoring(self.cfg.max_batch_size, self.cfg.batch_wait_timeout_s)

    def _forced(self, chosen: object, request: Request) -> str | None:
        forced = forced_variant(self.cfg, chosen, request.headers)
        if forced is not None:
            self.requests["forced"] += 1
        return forced

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

    async def _log(self, rows: list[dict], decisions: list[dict] | None = None) -> None:
        if self.log_buffer is not None:
            self.log_buffer.add(rows, decisions)

    async def __del__(self):  # Serve's graceful shutdown: the buffered rows reach the decision log
        buffer = getattr(self, "log_buffer", None)
        if buffer is not None:
            await buffer.flush()

    # ---- endpoints --------------------------------------------------------------------------------------

    async def _answer(self, handler, body, request: Request):
        """A /predict or /recommend reply, or its error reply; counted in ``in_flight`` while it is made."""
        with self.answering():
            try:
                return await handler(body, request)
            except Exception as e:
                return self._error(e)

    @api.post("/predict")
    async def predict(self, body: PredictRequest, request: Request):
        return await self._answer(self._predict, body, request)

    async def _predict(self, body: PredictRequest, request: Request) -> dict:
        forced = self._forced(body.variant, request)
        body.check(self.cfg.max_request_rows)
        rows, key = body.rows, self.store.user_key
        if key is None:  # no user to stick to: the request is the unit the traffic split assigns
            sticky = uuid.uuid4().hex
            names = [forced or assign(self.cfg.shares, self.name, sticky)] * len(rows)
        else:
            names = [forced or assign(self.cfg.shares, self.name, r.get(key) if isinstance(r, dict) else None)
                     for r in rows]
        groups = group_rows(names)
        parsed = {n: self.store.parse([rows[i] for i in idx], self.cfg.oov, where="rows") for n, idx in groups.items()}
        probs = np.empty(len(rows))
        cold = [False] * len(rows)
        unknown: dict[str, int] = {}
        versions: dict[str, list[str]] = {}
        results = await asyncio.gather(*(self.scores(n, parsed[n].columns) for n in groups))
        for (n, idx), (p, v) in zip(groups.items(), results):
            probs[idx] = p
            versions[n] = v
            for k, c in parsed[n].unknown.items():
                unknown[k] = unknown.get(k, 0) + c
            for i, c in zip(idx, parsed[n].cold):
                cold[i] = c
        rid = uuid.uuid4().hex
        item_key = self.store.item_key
        await self._log(request_rows(rid, "predict", names, forced is not None,
                                     [r.get(key) if key else None for r in rows],
                                     [r.get(item_key) if item_key else None for r in rows], cold))
        self.requests["predict"] += 1
        out = {"request_id": rid, "probabilities": probs.tolist(), "variants": names, "forced": forced is not None,
               "unknown_ids": unknown, "cold_start": sum(cold), "model_versions": versions}
        if len(groups) == 1:
            out["variant"] = names[0]
        return out

    @api.post("/recommend")
    async def recommend(self, body: RecommendRequest, request: Request):
        return await self._answer(self._recommend, body, request)

    async def _recommend(self, body: RecommendRequest, request: Request) -> dict:
        key, item_key = self.store.user_key, self.store.item_key
        if key is None or item_key is None or not self.cfg.recommend_on:
            raise RequestError("/recommend is not served here: "
                               + ("serve.recommend is false" if self.cfg.recommend is False else
                                  "the model has no single-valued user id and item id feature; POST /predict"), 404)
        body.check(key, self.cfg.max_recommend_k, 10 * self.cfg.max_request_rows, item_key)
        user, k = body.value(key), body.k
        forced = self._forced(body.variant, request)
        variant = forced or assign(self.cfg.shares, self.name, user)
        spec_v, explore = self.cfg.variants[variant], self.cfg.variants[variant].explore
        who = self.store.parse([{key: user, item_key: 0}], self.cfg.oov, where="body")
        uid = int(who.columns.ids[key][0])
        seen = self.store.schema.seen_items
        rated = (sorted(set(self.store.values[seen][uid]) - {0})  # type: ignore[index]
                 if body.exclude_rated and seen is not None else [])
        source = variant if variant in self.retrievers else spec_v.retrieve_from
        # new items (the request's, with their text, and over the whole catalogue the registered ones) are scored
        # as the unknown id with their text; the reply names them by their own ids
        registered = self.store.registered()
        new = list(body.new_items or [])
        if body.candidates is None:
            sent = {n[item_key] for n in new}
            new += [{item_key: i, "item_text": t} for i, t in registered.items() if i not in sent]
        cold: list = [{n[item_key] for n in new}]
        if body.candidates is None and source is not None:
            # retrieval: the two-tower or content member's index finds the candidates (seen items left out); a
            # two-stage variant (retrieve_from) then ranks them itself; new items join them, ranked by the variant
            n = spec_v.retrieve_k if spec_v.retrieve_from else max(k, explore.pool if explore is not None else k)
            logits, found, retrieved_by = await self.retrieve(self.retrievers[source], to_wire(who.columns), n,
                                                              [rated])
            versions = [retrieved_by]
            keep = found[0] >= 0
            items, logit = found[0][keep], logits[0][keep].astype(np.float64)
            unknown = {f: c for f, c in who.unknown.items() if f != item_key}
            if spec_v.retrieve_from is not None:
                scored = [{key: user, item_key: int(c)} for c in items]
            else:
                scored, probs = [], 1.0 / (1.0 + np.exp(-logit))
            scored += [{key: user, item_key: 0, "item_text": x["item_text"]} for x in new]
            if scored:
                parsed = self.store.parse(scored, self.cfg.oov, where="candidates")
                p, ranked_by = await self.scores(variant, parsed.columns)
                probs = p if spec_v.retrieve_from is not None else np.concatenate([probs, p])
                items = np.concatenate([items, np.array([x[item_key] for x in new], dtype=np.int64)])
                versions += ranked_by
            elif spec_v.retrieve_from is not None:
                probs = np.zeros(0)
        else:
            candidates = body.candidates if body.candidates is not None else self.store.known_items.tolist()
            parsed = self.store.parse([{key: user, item_key: c} for c in candidates]
                                      + [{key: user, item_key: 0, "item_text": n["item_text"]} for n in new],
                                      self.cfg.oov, where="candidates")
            items = parsed.columns.ids[item_key].numpy().copy()
            items[len(candidates):] = [n[item_key] for n in new]
            for j, c in enumerate(candidates):  # a registered id among the candidates keeps its own id
                if is_registered(c, registered):
                    items[j] = c
                    cold[0].add(c)
            probs, versions = await self.scores(variant, parsed.columns)
            if rated:  # a new item was never rated
                probs = np.where(np.isin(items, rated) & (np.arange(len(items)) < len(candidates)), -np.inf, probs)
            unknown = dict(parsed.unknown)
            if new:  # the new items are cold starts, not unknown ids
                unknown[item_key] -= len(new)
                unknown = {f: c for f, c in unknown.items() if c}
        rid, decisions = uuid.uuid4().hex, list[dict]()
        if explore is not None:
            out, decisions = explore_slate(explore, self.rngs[variant], self.store, rid, variant, uid, items, probs, k,
                                           forced is not None)
        else:
            out = top_k(items, probs, k, rid, item_key)
        # the decision (exploring) and the request are on record before the reply leaves
        shown = [x[item_key] for x in out["items"]]
        await self._log(request_rows(rid, "recommend", [variant], forced is not None, [user], [shown], cold),
                        decisions)
        self.requests["recommend"] += 1
        return {key: user, "variant": variant, "forced": forced is not None, "unknown_ids": unknown,
                "cold_start": sum(i in cold[0] for i in shown) if cold[0] else 0, "model_versions": versions, **out}

    @api.post("/feedback")
    async def feedback(self, body: FeedbackRequest):
        """A reward for an item a /recommend reply showed or a /predict request scored: {"request_id", item id,
        "reward" (default 1)}; taken within serve.feedback_window_s."""
        try:
            item_key = self.store.item_key
            if item_key is None:
                raise RequestError("/feedback is not served here: the model has no item id feature", 404)
            item = body.check(item_key)
            if self.decision_log is None or self.log_buffer is None:
                raise RequestError("request_id: this application keeps no request log (no run directory)", 404)
            await self.log_buffer.flush()  # the request this feedback is for is on record first
            status, message = await self.decision_log.record_feedback.remote(body.request_id, item, body.reward)
            if status != 200:
                raise RequestError(message, status)
        except Exception as e:
            return self._error(e)
        self.requests["feedback"] += 1
        return {"request_id": body.request_id, item_key: item, "reward": body.reward, "status": message}

    @api.get("/healthz")
    async def healthz(self):
        registry = self.store.new_items
        return {"status": "ok", "uptime_s": round(time.time() - self.started, 1),
                **({"new_items": registry.describe()} if registry is not None else {})}

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
