"""The traffic split: which variant answers a request.

Every row goes to a variant by a hash of its sticky key (the user id), so a user always sees the same variant and
the shares over many users follow ``serve.traffic`` (Ray Serve has no traffic split between model versions of its
own). A request may choose its variant only where ``serve.force_variant`` lets it.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

from .features import RequestError


def bucket(salt: str, key: Any) -> float:
    """A stable point in [0, 1) for a sticky key: the same user, the same variant, on every replica and restart."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign(shares: dict[str, float], salt: str, key: Any) -> str:
    point, acc = bucket(salt, key), 0.0
    names = list(shares)
    for name in names:
        acc += shares[name]
        if point < acc:
            return name
    return names[-1]


def forced_variant(cfg: Any, chosen_in_body: Any, headers: Mapping[str, str]) -> str | None:
    """The variant a request chose for itself, if the application lets it (``serve.force_variant``): the body's
    'variant' field, or the ``serve.force_header`` header; None when it chose none. Refused (403) when forcing is
    off or goes through the other channel, so a client cannot bypass the traffic split unnoticed."""
    from_header = headers.get(cfg.force_header) if cfg.force_variant == "header" else None
    if chosen_in_body is not None and cfg.force_variant != "body":
        how = ("forcing is off on this application (serve.force_variant)" if cfg.force_variant == "off"
               else f"this application takes it from the {cfg.force_header} header")
        raise RequestError(f"variant: a request may not choose its variant: {how}", 403)
    chosen = chosen_in_body if chosen_in_body is not None else from_header
    if chosen is None:
        return None
    if not isinstance(chosen, str) or chosen not in cfg.variants:
        raise RequestError(f"variant: {chosen!r} is not served; variants: {', '.join(cfg.variants)}")
    return chosen


def group_rows(names: list[str]) -> dict[str, list[int]]:
    """Row indices per variant, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        groups.setdefault(n, []).append(i)
    return groups
