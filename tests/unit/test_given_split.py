"""data.split method given: every interaction in the split a file names (another library's split), checked whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from raytrain.errors import DataError, SpecError
from raytrain.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def interactions() -> pd.DataFrame:
    from raytrain.data.movielens import _raw_files, _read_atomic

    return _read_atomic(_raw_files(None)["ml-100k.inter"], "ml-100k.inter")[["user_id", "item_id", "rating"]]


def _spec(path: Path):
    return load_spec(ROOT / "jobs/train_ml100k.yaml", [f"data.split={{method: given, path: {path}}}"])


def test_each_interaction_lands_in_the_split_the_file_names(interactions, tmp_path):
    from raytrain.data import prepare

    rng = np.random.default_rng(3)
    given = interactions.assign(split=rng.choice(["train", "validation", "test"], len(interactions), p=[.7, .2, .1]))
    path = tmp_path / "split.parquet"
    given.sample(frac=1.0, random_state=1)[["user_id", "item_id", "split"]].to_parquet(path)  # any row order
    prepared = prepare(_spec(path).data)
    users = sorted(set(interactions["user_id"]))  # the prepared ids number the raw ids in sorted order from 1
    items = sorted(set(interactions["item_id"]))
    for split in ("train", "validation", "test"):
        t = pq.read_table(prepared.paths[split][0], columns=["user_id", "item_id", "label"]).to_pandas()
        got = set(zip([users[u - 1] for u in t["user_id"]], [items[i - 1] for i in t["item_id"]]))
        want = given[given["split"] == split]
        assert got == set(zip(want["user_id"], want["item_id"])) and len(t) == len(want)
        # the label is the spec's rule on the row's own rating
        rating = want.set_index(["user_id", "item_id"])["rating"].astype(int)
        keys = list(zip([users[u - 1] for u in t["user_id"]], [items[i - 1] for i in t["item_id"]]))
        np.testing.assert_array_equal(t["label"].to_numpy(), (rating.loc[keys].to_numpy() >= 4).astype(np.float32))


@pytest.mark.parametrize("change, words", [
    (lambda g: g.iloc[1:], "names 99,999 interactions, of which 99,999 are in ml-100k.inter"),
    (lambda g: pd.concat([g, g.iloc[:1]]), "is named twice"),
    (lambda g: g.assign(split=np.where(np.arange(len(g)) == 5, "dev", g["split"])), "not ['dev']"),
    (lambda g: g.drop(columns=["split"]), "no column(s) split"),
    (lambda g: g.assign(item_id=g["item_id"] + "x"), "of which 0 are in ml-100k.inter"),
])
def test_a_file_that_does_not_name_every_interaction_once_is_refused(interactions, tmp_path, change, words):
    from raytrain.data import prepare

    given = interactions.assign(split="train")[["user_id", "item_id", "split"]]
    path = tmp_path / "split.parquet"
    change(given).to_parquet(path)
    with pytest.raises(DataError, match=r"data\.split\.path .*" + words.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        prepare(_spec(path).data)


def test_given_split_spec_errors(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="cannot read it as parquet"):
        from raytrain.data import prepare

        prepare(_spec(tmp_path / "x.parquet").data)
    for overrides, words in (
        (["data.split={method: given}"], "method given takes a path"),
        (["data.split={method: random, path: x.parquet}"], "method given takes a path"),
        ([f"data.split={{method: given, path: {tmp_path}/x.parquet, cold_items: 0.1}}"], "not with method given"),
    ):
        with pytest.raises(SpecError, match=words):
            load_spec(ROOT / "jobs/train_ml100k.yaml", overrides)
    with pytest.raises(SpecError, match="split.method: given is for movielens-100k in this version, not synthetic"):
        load_spec(ROOT / "jobs/train_synthetic.yaml", [f"data.split={{method: given, path: {tmp_path}/x.parquet}}"])
