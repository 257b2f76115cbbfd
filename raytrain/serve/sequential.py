"""Serving a sequential model (sasrec, hstu): ``/recommend`` ranks the whole catalogue for a user's history.

The history is the user's own (every action the run's data holds for that user id) or the request's ``history`` of
item ids (with optional ``timestamps``). The model encodes its last ``max_len`` actions into a user vector and the
variant's catalogue index (``retrieval.ItemIndex``: exact below ``retrieval.exact_below`` items, faiss above) finds
the top ``k`` over every item, the history's items left out unless ``exclude_seen`` is false. One
``SequenceRanker`` deployment per variant; the ingress routes users to variants by the traffic split (``routing``)
and logs every request (``decisions``).
"""

import json
import logging  # no postponed annotations here: FastAPI reads the endpoints' parameter types at runtime
import time
import uuid
from typing import Annotated, Any, Optional

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BeforeValidator, Field
from ray import serve

from .decisions import LogBuffer, bind_ingress, request_rows
from .features import RequestError
from .refs import MemberRef
from .requests import _Body, _flag, _is_int, install_error_replies
from .routing import assign, forced_variant

log = logging.getLogger("ray.serve")
api = FastAPI(title="raytrain serving (sequential models)")
COUNTS = {"predict": 0, "recommend": 0, "feedback": 0, "rejected": 0, "forced": 0, "failed": 0}
install_error_replies(api, COUNTS)


def _id_list(v: Any) -> Any:
    if v is not None and not (isinstance(v, list) and all(_is_int(x) for x in v)):
        raise ValueError("expected a list of integer ids")
    return v


class SequenceRecommendRequest(_Body):
    k: Any = Field(10, description="how many items")
    history: Annotated[Optional[list[Any]], BeforeValidator(_id_list)] = Field(
        None, description="item ids, oldest first (default: the user's history in the run's data)")
    timestamps: Annotated[Optional[list[Any]], BeforeValidator(_id_list)] = Field(
        None, description="with history: one time (seconds) per item (default: all equal)")
    actions: Annotated[Optional[list[Any]], BeforeValidator(_id_list)] = Field(
        None, description="with history: one action id per item, for a model that embeds actions (default: 0)")
    exclude_seen: Annotated[bool, BeforeValidator(_flag)] = Field(True, description="leave the history's items out")
    variant: Any = None

    def check(self, user_key: str, max_k: int, max_history: int) -> None:
        self.check_fields({user_key})
        user = self.value(user_key)
        if user is not None and not _is_int(user):
            raise RequestError(f"{user_key}: expected an integer user id, got {user!r}")
        if self.history is None and user is None:
            raise RequestError(f"body: give {user_key!r} (their history in the run's data) or 'history' (item ids)")
        if not _is_int(self.k) or not 1 <= self.k <= max_k:
            raise RequestError(f"k: expected an integer in [1, {max_k}], got {self.k!r}")
        if self.history is not None and len(self.history) > max_history:
            raise RequestError(f"history: {len(self.history)} items, more than {max_history}", 413)
        for name in ("timestamps", "actions"):
            given = getattr(self, name)
            if given is not None and (self.history is None or len(given) != len(self.history)):
                raise RequestError(f"{name}: needs 'history', one value per item")


@serve.deployment
class SequenceRanker:
    """One sequential model, unsharded from its run directory, with the run's histories and id maps."""

    def __init__(self, ref: MemberRef, threads: int):
        from ..train.sequential.load import load_sequential

        torch.set_num_threads(threads)
        self.ref = ref
        self.spec, self.model, self.seqs = load_sequential(ref.run_dir, ref.checkpoint)
        if ref.quantize != "none":  # the item table the history lookups read, and the catalogue read back from it
            from .quantize import quantize_tables

            self.model = quantize_tables(self.model, {"t_item": ref.quantize})  # type: ignore[assignment]
        with torch.no_grad():
            self.items = self.model.item_embeddings().detach()
        from .quantize import table_storage

        self.tables = table_storage(self.model)
        self.index = None
        if ref.retrieval:  # the catalogue (every item but the padding row 0) in the variant's index
            from ..spec.serve import RetrievalSpec
            from .retrieval import ItemIndex

            cfg = RetrievalSpec.model_validate(json.loads(ref.retrieval))
            self.index = ItemIndex(self.items[1:].float().numpy(), np.arange(1, self.items.shape[0]), cfg)
        s = self.seqs
        self.user_row = {int(u): i for i, u in enumerate(s.user_ids)} if s.user_ids is not None else {}
        self.source_id = s.item_ids if s.item_ids is not None else np.arange(s.num_items)
        self.model_id = {int(x): i for i, x in enumerate(self.source_id) if i > 0}

    def recommend(self, user: int | None, history: list[int] | None, timestamps: list[int] | None,
                  actions: list[int] | None, k: int, exclude_seen: bool) -> dict:
        from ..data.sequences import Sequences
        from ..kernels import topk_scores
        from ..train.sequential.ranking import user_vectors

        s, unknown = self.seqs, 0
        if history is None:
            row = self.user_row.get(int(user)) if user is not None else None
            if row is None:
                return {"error": f"user {user!r} has no history in this model's data; send 'history'", "status": 404}
            span = slice(s.offsets[row], s.offsets[row + 1])
            items, times = s.items[span], s.timestamps[span]
            acts = None if s.actions is None else s.actions[span]
        else:
            ids = [self.model_id.get(int(x)) for x in history]
            unknown = sum(i is None for i in ids)
            keep = [i for i, x in enumerate(ids) if x is not None]
            items = np.array([ids[i] for i in keep], dtype=np.int64)
            times = np.array([timestamps[i] for i in keep] if timestamps else np.zeros(len(keep)), dtype=np.int64)
            acts = np.array([actions[i] for i in keep], dtype=np.int64) if actions else None
        if len(items) == 0:
            return {"error": "history: no item this model knows", "status": 422}
        one = Sequences(items, times, np.array([0, len(items)], dtype=np.int64), s.num_items, acts)
        query = user_vectors(self.model, one)
        k = min(k, self.items.shape[0] - 1 - (len(set(items.tolist())) if exclude_seen else 0))
        if self.index is not None:
            s_, t_ = self.index.search(query.float().numpy(), k, [items] if exclude_seen else None)
            scores, top = torch.from_numpy(s_), torch.from_numpy(t_)
        else:
            mask = torch.ones(self.items.shape[0], dtype=torch.bool)
            mask[0] = False
            exclude = (torch.tensor([0, len(items)]), torch.from_numpy(items)) if exclude_seen else None
            scores, top = topk_scores(query, self.items, k, item_mask=mask, exclude=exclude)
        found = top[0] >= 0
        return {"items": [int(self.source_id[i]) for i in top[0][found].tolist()], "scores": scores[0][found].tolist(),
                "history_length": int(len(items)), "unknown_ids": unknown, "model_versions": [self.ref.version]}

    def info(self) -> dict:
        return {"name": self.ref.name, "run_dir": self.ref.run_dir, "checkpoint": self.ref.checkpoint,
                "arch": self.spec.model.arch, "embedding_dim": self.spec.model.embedding_dim,
                "max_len": self.spec.model.sequence.max_len, "items": int(self.seqs.num_items - 1),
                "users": len(self.user_row), "parameters": int(sum(p.numel() for p in self.model.parameters())),
                "tables": self.tables, "catalogue_bytes": int(self.items.numel() * self.items.element_size()),
                **({"retrieval": self.index.describe()} if self.index is not None else {})}


@serve.deployment
@serve.ingress(api)
class SequenceIngress:
    def __init__(self, config: dict, handles: dict, decision_log=None):
        from ..spec.serve import ServeSpec

        self.cfg = ServeSpec.model_validate(config["serve"])
        self.name = config["name"]
        self.handles = handles  # variant -> its SequenceRanker
        self.log_buffer = LogBuffer(decision_log) if decision_log is not None else None
        self.requests = COUNTS
        self.started = time.time()

    def _error(self, e: Exception) -> JSONResponse:
        if isinstance(e, RequestError):
            self.requests["rejected"] += 1
            return JSONResponse({"error": str(e)}, status_code=e.status)
        self.requests["failed"] += 1
        rid = uuid.uuid4().hex[:16]
        log.exception("request %s failed", rid)
        return JSONResponse({"error": f"internal error ({type(e).__name__}); request id {rid}", "request_id": rid},
                            status_code=500)

    @api.post("/recommend")
    async def recommend(self, body: SequenceRecommendRequest, request: Request):
        try:
            return await self._recommend(body, request)
        except Exception as e:
            return self._error(e)

    async def _recommend(self, body: SequenceRecommendRequest, request: Request) -> dict:
        key = self.cfg.sticky_key
        body.check(key, self.cfg.max_recommend_k, 10 * self.cfg.max_request_rows)
        user = body.value(key)
        forced = forced_variant(self.cfg, body.variant, request.headers)
        if forced is not None:
            self.requests["forced"] += 1
        variant = forced or assign(self.cfg.shares, self.name, user if user is not None else tuple(body.history or ()))
        out = await self.handles[variant].recommend.remote(user, body.history, body.timestamps, body.actions, body.k,
                                                           body.exclude_seen)
        if "error" in out:
            raise RequestError(out["error"], out["status"])
        rid = uuid.uuid4().hex
        if self.log_buffer is not None:
            self.log_buffer.add(request_rows(rid, "recommend", [variant], forced is not None, [user], [out["items"]]))
        self.requests["recommend"] += 1
        return {"request_id": rid, key: user, "variant": variant, "forced": forced is not None, **out}

    async def __del__(self):  # Serve's graceful shutdown: the buffered rows reach the decision log
        buffer = getattr(self, "log_buffer", None)
        if buffer is not None:
            await buffer.flush()

    @api.post("/predict")
    async def predict(self, request: Request):
        self.requests["rejected"] += 1
        return JSONResponse({"error": "this application serves sequential models, which rank the catalogue for a "
                                      "history: POST /recommend"}, status_code=400)

    @api.get("/healthz")
    async def healthz(self):
        return {"status": "ok", "uptime_s": round(time.time() - self.started, 1)}

    @api.get("/metadata")
    async def metadata(self):
        infos = {v: await h.info.remote() for v, h in self.handles.items()}
        return {"name": self.name, "kind": "sequential", "variants": {
            v: {"share": self.cfg.shares[v], "model": infos[v]} for v in self.handles},
            "sticky_key": self.cfg.sticky_key, "requests": self.requests}


def build_sequential_app(spec, variants: list, log_dir: str | None = None):
    """A ``SequenceRanker`` per variant (a single model each), then the ingress."""
    from ..errors import CheckpointError

    cfg = spec.serve
    handles = {}
    for v in variants:
        if len(v.members) != 1 or cfg.variants[v.name].explore is not None:
            raise CheckpointError(f"serve.variants.{v.name}: a sequential model is served alone (one run, no "
                                  "ensemble or exploration in this version)")
        handles[v.name] = SequenceRanker.options(  # type: ignore[attr-defined]
            name=f"ranker-{v.name}"[:60], num_replicas=cfg.replicas,
            ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus}).bind(v.members[0],
                                                                                        cfg.torch_threads)
    config = {"name": spec.name, "serve": cfg.model_dump(mode="json")}
    return bind_ingress(SequenceIngress, cfg, log_dir if cfg.request_log else None, config, handles)
