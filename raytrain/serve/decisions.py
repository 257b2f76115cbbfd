"""Request, decision and feedback logs of a serving application: parquet files in the serve run's ``logs/`` folder.

One ``DecisionLog`` replica per application receives every request (which variant served which user, and the
items scored or shown) and every exploring decision from every ingress replica, so ``POST /feedback`` can check
a request id wherever it lands, and an A/B analysis (``kind: abtest``) can compare the variants. Rows are buffered and written
as a new parquet file every ``flush_s`` seconds (and on shutdown); nothing is rewritten, so a reader
never sees a half-written file (each file is written under a temporary name and renamed).

Feedback is taken for ``serve.feedback_window_s`` after a request (default a day): the log remembers each open
request's items (request id -> items) for that long, and at most ``serve.max_open_decisions`` of them (oldest
forgotten first), so its memory is bounded however long it runs. A restart reads back only the files of the
window (their names carry their time), not every earlier one.

``logs/requests/*.parquet``: one row per (request, user): request_id, time, endpoint (predict | recommend), variant,
forced, user (the sticky key's value, as text), items (the item ids scored for the user, or shown, in order).
``logs/decisions/*.parquet``: one row per exploring (request, position): request_id, time, variant, forced (the request chose
its variant itself: leave it out of comparisons of the traffic split), policy
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
from collections import OrderedDict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from ray import serve

DECISION_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("time", pa.float64()), ("variant", pa.string()), ("forced", pa.bool_()),
    ("policy", pa.string()),
    ("user", pa.int64()), ("context", pa.string()), ("position", pa.int32()), ("item", pa.int64()),
    ("propensity", pa.float64()), ("score", pa.float64()), ("candidates", pa.list_(pa.int64())),
    ("scores", pa.list_(pa.float64())), ("probabilities", pa.list_(pa.float64())),
])
REQUEST_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("time", pa.float64()), ("endpoint", pa.string()), ("variant", pa.string()),
    ("forced", pa.bool_()), ("user", pa.string()), ("items", pa.list_(pa.int64())),
    ("cold_items", pa.list_(pa.int64())),  # of ``items``, those scored from the text the request gave (cold start)
])
FEEDBACK_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("item", pa.int64()), ("position", pa.int32()), ("reward", pa.float64()),
    ("time", pa.float64()),
])


def _write(rows: list[dict], schema: pa.Schema, folder: Path, at: float) -> None:
    """A new file named for the time ``at`` (the log's clock) it was written."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-{int(at * 1e9)}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = folder / f".{name}.tmp"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    os.replace(tmp, folder / name)


def read_logs(log_dir: str | Path) -> tuple[pa.Table, pa.Table]:
    """(decisions, feedback) of a serve run's ``logs/`` folder; empty tables when none were written."""
    return read_log(log_dir, "decisions"), read_log(log_dir, "feedback")


SCHEMAS = {"requests": REQUEST_SCHEMA, "decisions": DECISION_SCHEMA, "feedback": FEEDBACK_SCHEMA}


def read_log(log_dir: str | Path, kind: str) -> pa.Table:
    """One log (requests, decisions or feedback) of a serve run's ``logs/`` folder; empty when none was written."""
    schema = SCHEMAS[kind]
    files = sorted((Path(log_dir) / kind).glob("part-*.parquet"))
    return pa.concat_tables([_read(f, schema) for f in files]) if files else schema.empty_table()


def request_rows(rid: str, endpoint: str, variants: list[str], forced: bool, users: list, items: list,
                 cold: list | None = None) -> list[dict]:
    """One request-log row per (request, user) from parallel lists (a variant, user and item or items per row, and
    whether the row was scored from its item's text): the items scored or shown to each user (what /feedback can
    reward, what abtest counts), and those of them that were cold starts."""
    per_user: dict[str, tuple[str, list[int], list[int]]] = {}
    for r, (variant, user, item) in enumerate(zip(variants, users, items)):
        entry = per_user.setdefault(str(user), (variant, [], []))
        ids = [i for i in (item if isinstance(item, list) else [item])
               if isinstance(i, int) and not isinstance(i, bool) and -2**63 <= i < 2**63]
        entry[1].extend(ids)
        mark = cold[r] if cold is not None else False
        if mark:  # True: every item of the row; a set: those of its items
            entry[2].extend(i for i in ids if mark is True or i in mark)
    now = time.time()
    return [{"request_id": rid, "time": now, "endpoint": endpoint, "variant": v, "forced": forced, "user": u,
             "items": its, "cold_items": c} for u, (v, its, c) in per_user.items()]


def _read(path: Path, schema: pa.Schema) -> pa.Table:
    t = pq.read_table(path)
    if "forced" in schema.names and "forced" not in t.column_names:  # written before forced requests were marked
        t = t.append_column("forced", pa.array([False] * t.num_rows))
    if "cold_items" in schema.names and "cold_items" not in t.column_names:  # written before cold starts were marked
        t = t.append_column("cold_items", pa.array([[]] * t.num_rows, type=pa.list_(pa.int64())))
    return t.select(schema.names).cast(schema)


def _file_time(path: Path) -> float:
    """The time a log file was written, from its name (part-<time_ns>-<id>.parquet); 0 when the name has none."""
    try:
        return int(path.name.split("-")[1]) / 1e9
    except (IndexError, ValueError):
        return 0.0


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.05})
class DecisionLog:
    def __init__(self, log_dir: str, flush_s: float = 1.0, window_s: float = 86400.0, max_open: int = 1_000_000,
                 clock=time.time):
        self.dir = Path(log_dir)
        self.flush_s, self.window_s, self.max_open, self.clock = flush_s, window_s, max_open, clock
        self.pending: dict[str, list[dict]] = {kind: [] for kind in SCHEMAS}  # rows not yet written, per log
        # the open requests, oldest first: request id -> (time, the items shown or scored, in order)
        self.open: OrderedDict[str, tuple[float, tuple[int, ...]]] = OrderedDict()
        self.restored = self._restore()
        self._task: asyncio.Task | None = None

    def _restore(self) -> int:
        """The requests of the feedback window, from the files written in it (a file is written after its rows'
        times, so older files hold only older requests). Returns the number of files read."""
        since = self.clock() - self.window_s
        files = sorted(f for f in (self.dir / "requests").glob("part-*.parquet") if _file_time(f) >= since)
        shown: dict[str, tuple[float, list[int]]] = {}
        for f in files:
            t = pq.read_table(f, columns=["request_id", "time", "items"])
            for rid, at, items in zip(*(t.column(c).to_pylist() for c in ("request_id", "time", "items"))):
                if at >= since:
                    shown.setdefault(rid, (at, []))[1].extend(items)
        for rid, (at, items) in sorted(shown.items(), key=lambda kv: kv[1][0]):
            self._open(rid, at, tuple(items))
        return len(files)

    def _open(self, request_id: str, at: float, slate: tuple[int, ...]) -> None:
        self.open[request_id] = (at, slate)
        self.open.move_to_end(request_id)
        self._forget(self.clock())

    def _forget(self, now: float) -> None:
        while self.open:
            _, (at, _) = next(iter(self.open.items()))
            if at >= now - self.window_s and len(self.open) <= self.max_open:
                break
            self.open.popitem(last=False)

    def _ensure_flusher(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            self.flush()

    def flush(self) -> int:
        n = 0
        for kind, schema in SCHEMAS.items():
            rows, self.pending[kind] = self.pending[kind], []
            if rows:
                _write(rows, schema, self.dir / kind, self.clock())
                n += len(rows)
        return n

    async def log(self, decisions: list[dict], requests: list[dict]) -> None:
        """Requests (an ingress sends them in batches, ``LogBuffer``): exploring decisions' rows (one per position)
        and request rows (one per request and user); each request's items take feedback from now on."""
        self._ensure_flusher()
        slates: dict[str, tuple[float, list[int]]] = {}
        for r in requests:
            slates.setdefault(r["request_id"], (r["time"], []))[1].extend(r["items"])
        for rid, (at, items) in slates.items():
            self._open(rid, at, tuple(items))
        self.pending["decisions"].extend(decisions)
        self.pending["requests"].extend(requests)

    async def record_feedback(self, request_id, item, reward) -> tuple[int, str]:
        """(HTTP status, message): 200 when recorded; 404 for an unknown request id or one older than the feedback
        window; 422 for an item not shown."""
        self._ensure_flusher()
        self._forget(self.clock())
        entry = self.open.get(request_id)
        if entry is None:
            return 404, (f"request_id: {request_id!r} is not a logged request of this application, or older than "
                         f"its feedback window ({self.window_s:g} s)")
        slate = list(entry[1])
        if item not in slate:
            return 422, f"item_id: {item!r} was not among request {request_id}'s items {slate[:20]}"
        self.pending["feedback"].append({"request_id": request_id, "item": item, "position": slate.index(item),
                                         "reward": float(reward), "time": time.time()})
        return 200, "recorded"

    def stats(self) -> dict:
        return {"open_decisions": len(self.open), "restored_files": self.restored}

    def __del__(self):  # Serve's graceful shutdown: buffered rows reach storage
        try:
            self.flush()
        except Exception:
            pass


class LogBuffer:
    """The ingress's side of the request log: rows collected here and sent to the ``DecisionLog`` in one call every
    ``every_s`` (or at ``max_rows``), not one Serve call per request, which cost about as much as the request itself
    on small machines (benchmarks/serve_load.py). Feedback flushes first, so a request is known before its feedback;
    a crash loses at most ``every_s`` of rows, as the DecisionLog's own buffer already could."""

    def __init__(self, handle, every_s: float = 0.05, max_rows: int = 512):
        self.handle, self.every_s, self.max_rows = handle, every_s, max_rows
        self.decisions: list[dict] = []
        self.requests: list[dict] = []
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()  # the loop keeps only weak references to its tasks

    def _start(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    def add(self, requests: list[dict], decisions: list[dict] | None = None) -> None:
        self.requests.extend(requests)
        self.decisions.extend(decisions or [])
        if len(self.requests) + len(self.decisions) >= self.max_rows:
            self._start(self.flush())
        elif self._task is None or self._task.done():
            self._task = self._start(self._later())

    async def _later(self) -> None:
        await asyncio.sleep(self.every_s)
        await self.flush()

    async def flush(self) -> None:
        decisions, requests = self.decisions, self.requests
        self.decisions, self.requests = [], []
        if decisions or requests:
            await self.handle.log.remote(decisions, requests)


def bind_ingress(ingress, cfg, log_dir: str | None, *args):
    """An ingress deployment (its replicas, CPUs and request limit from the serve config) bound to ``args`` and a
    ``DecisionLog`` writing under ``log_dir`` (None: no request log)."""
    decision_log = None
    if log_dir is not None:
        decision_log = DecisionLog.bind(log_dir, cfg.log_flush_s, cfg.feedback_window_s,  # type: ignore[attr-defined]
                                        cfg.max_open_decisions)
    return ingress.options(num_replicas=cfg.ingress_replicas, ray_actor_options={"num_cpus": cfg.ingress_num_cpus},
                           max_ongoing_requests=cfg.max_ongoing_requests).bind(*args, decision_log)
