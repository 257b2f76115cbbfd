"""Decision and feedback logs of exploring variants: parquet files in the serve run's ``logs/`` folder.

One ``DecisionLog`` replica per application receives every exploring decision from every ingress
replica, so ``POST /feedback`` can check a request id wherever it lands. Rows are buffered and written
as a new parquet file every ``flush_s`` seconds (and on shutdown); nothing is rewritten, so a reader
never sees a half-written file (each file is written under a temporary name and renamed).

``logs/decisions/*.parquet``: one row per (request, position): request_id, time, variant, policy
(JSON: name and parameters), user, context (JSON: the user's features), position, item, propensity
(P(item at position) under the policy), score (the ranker's probability), candidates, scores,
probabilities (P(candidate at this position), sums to 1).
``logs/feedback/*.parquet``: request_id, item, position, reward, time.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from ray import serve

DECISION_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("time", pa.float64()), ("variant", pa.string()), ("policy", pa.string()),
    ("user", pa.int64()), ("context", pa.string()), ("position", pa.int32()), ("item", pa.int64()),
    ("propensity", pa.float64()), ("score", pa.float64()), ("candidates", pa.list_(pa.int64())),
    ("scores", pa.list_(pa.float64())), ("probabilities", pa.list_(pa.float64())),
])
FEEDBACK_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("item", pa.int64()), ("position", pa.int32()), ("reward", pa.float64()),
    ("time", pa.float64()),
])


def _write(rows: list[dict], schema: pa.Schema, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = folder / f".{name}.tmp"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    os.replace(tmp, folder / name)


def read_logs(log_dir: str | Path) -> tuple[pa.Table, pa.Table]:
    """(decisions, feedback) of a serve run's ``logs/`` folder; empty tables when none were written."""
    out = []
    for sub, schema in (("decisions", DECISION_SCHEMA), ("feedback", FEEDBACK_SCHEMA)):
        files = sorted((Path(log_dir) / sub).glob("part-*.parquet"))
        out.append(pa.concat_tables([pq.read_table(f, schema=schema) for f in files]) if files
                   else schema.empty_table())
    return out[0], out[1]


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.05})
class DecisionLog:
    def __init__(self, log_dir: str, flush_s: float = 1.0):
        self.dir = Path(log_dir)
        self.flush_s = flush_s
        self.decisions: list[dict] = []
        self.feedback: list[dict] = []
        # request id -> the slate's items, position order; restored from earlier files after a restart
        self.slates: dict[str, list[int]] = {}
        decisions, _ = read_logs(self.dir)
        for rid, pos, item in zip(decisions.column("request_id").to_pylist(), decisions.column("position").to_pylist(),
                                  decisions.column("item").to_pylist()):
            self._remember(rid, pos, item)
        self._task: asyncio.Task | None = None

    def _remember(self, request_id: str, position: int, item: int) -> None:
        slate = self.slates.setdefault(request_id, [])
        slate.extend([-1] * (position + 1 - len(slate)))
        slate[position] = item

    def _ensure_flusher(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            self.flush()

    def flush(self) -> int:
        n = len(self.decisions) + len(self.feedback)
        if self.decisions:
            rows, self.decisions = self.decisions, []
            _write(rows, DECISION_SCHEMA, self.dir / "decisions")
        if self.feedback:
            rows, self.feedback = self.feedback, []
            _write(rows, FEEDBACK_SCHEMA, self.dir / "feedback")
        return n

    async def log(self, rows: list[dict]) -> None:
        self._ensure_flusher()
        for r in rows:
            self._remember(r["request_id"], r["position"], r["item"])
        self.decisions.extend(rows)

    async def record_feedback(self, request_id, item, reward) -> tuple[int, str]:
        """(HTTP status, message): 200 when recorded; 404 for an unknown request id; 422 for an item not shown."""
        self._ensure_flusher()
        slate = self.slates.get(request_id)
        if slate is None:
            return 404, f"request_id: {request_id!r} is not a logged exploring decision of this application"
        if item not in slate:
            return 422, f"item_id: {item!r} was not in request {request_id}'s slate {slate}"
        self.feedback.append({"request_id": request_id, "item": item, "position": slate.index(item),
                              "reward": float(reward), "time": time.time()})
        return 200, "recorded"

    def __del__(self):  # Serve's graceful shutdown: buffered rows reach storage
        try:
            self.flush()
        except Exception:
            pass
