"""New items registered in a file (``serve.new_items``), so a client need not send an item's text with every request.

The file (a path or a pyarrow.fs URI) holds one row per item: ``item_id`` (the id clients will use) and
``item_text``, as parquet (``.parquet``) or JSON lines (anything else). The ingress reads it when it starts and again
when it changes (its size or modification time, looked at most every ``serve.new_items_check_s`` seconds, on the
request path). Then ``/predict`` scores a registered id from its text (a cold start, as if the row carried
``item_text``) and ``/recommend`` ranks the registered items beside the catalogue's.

An id the catalogue already has is refused (it would be two items), as are a repeated id and an empty or over-long
text: the whole file, with the first bad row named. A file that turns bad while serving is not taken: the items read
before stay registered, and ``/healthz`` shows the error.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np

from .cold_start import MAX_TEXT

log = logging.getLogger("ray.serve")
MAX_ITEMS = 100_000  # registered items: each /recommend over the catalogue scores all of them


def parse_new_items(data: bytes, parquet: bool, where: str, known: np.ndarray | None = None) -> dict[int, str]:
    """item id -> text of a registry file's bytes; ValueError naming the first bad row. ``known``: the catalogue's
    item ids (a registered id must not be one of them)."""
    if parquet:
        import io

        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(data))
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise ValueError(f"{where}: not a parquet file ({type(e).__name__}: {e})") from None
        missing = {"item_id", "item_text"} - set(table.column_names)
        if missing:
            raise ValueError(f"{where}: no column(s) {', '.join(sorted(missing))}; it has {', '.join(table.column_names)}")
        rows = [(f"row {i}", r) for i, r in enumerate(table.select(["item_id", "item_text"]).to_pylist())]
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{where}: not UTF-8 text ({e})") from None
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((f"line {n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{where} line {n}: not JSON ({e.msg})") from None
    if len(rows) > MAX_ITEMS:
        raise ValueError(f"{where}: {len(rows):,} items, more than the {MAX_ITEMS:,} a registry holds")
    known_set = set(known.tolist()) if known is not None else set()
    out: dict[int, str] = {}
    for at, row in rows:
        if not isinstance(row, dict) or set(row) != {"item_id", "item_text"}:
            raise ValueError(f"{where} {at}: expected an object with exactly item_id and item_text, got {str(row)[:80]}")
        iid, t = row["item_id"], row["item_text"]
        if isinstance(iid, bool) or not isinstance(iid, int) or iid < 0:
            raise ValueError(f"{where} {at}: item_id must be a non-negative integer, got {iid!r}")
        if not isinstance(t, str) or not t.strip() or len(t) > MAX_TEXT:
            raise ValueError(f"{where} {at}: item_text must be a non-empty string of at most {MAX_TEXT} characters")
        if iid in known_set:
            raise ValueError(f"{where} {at}: item_id {iid} is an item of the catalogue; a new item needs an id of its own")
        if iid in out:
            raise ValueError(f"{where} {at}: item_id {iid} is registered twice")
        out[iid] = t
    return out


def read_new_items(location: str, known: np.ndarray | None = None) -> tuple[dict[int, str], tuple]:
    """(the registry, the file's (size, mtime) it was read at). OSError when it cannot be read."""
    from ..storage import Store, redact

    store = Store(location)
    info = store.fs.get_file_info(store.path())
    with store.fs.open_input_stream(store.path()) as f:
        data = f.read()
    where = f"serve.new_items {redact(location)}"
    return parse_new_items(data, location.split("?")[0].endswith(".parquet"), where, known), (info.size, info.mtime_ns)


class NewItems:
    """The registry as one ingress replica holds it (``items``), re-read when the file changes."""

    def __init__(self, location: str, check_s: float, known: np.ndarray) -> None:
        self.location, self.check_s, self.known = location, check_s, known
        self.items, self.stamp = read_new_items(location, known)  # a bad file at start fails the deployment
        self.checked, self.error, self.loads = time.monotonic(), "", 1

    def refresh(self) -> dict[int, str]:
        """The registry, re-read first if the file changed since it was last read (looked at every ``check_s``)."""
        now = time.monotonic()
        if now - self.checked < self.check_s:
            return self.items
        self.checked = now
        from ..storage import Store

        try:
            store = Store(self.location)
            info = store.fs.get_file_info(store.path())
            if (info.size, info.mtime_ns) == self.stamp:
                return self.items
            self.items, self.stamp = read_new_items(self.location, self.known)
            self.error, self.loads = "", self.loads + 1
            log.info("serve.new_items: %d registered items", len(self.items))
        except (OSError, ValueError) as e:
            self.error = str(e)
            log.warning("serve.new_items: kept the %d items read before: %s", len(self.items), e)
        return self.items

    def describe(self) -> dict:
        return {"items": len(self.items), "loads": self.loads, **({"error": self.error} if self.error else {})}
