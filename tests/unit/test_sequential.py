"""Sequential models: histories and the leave-one-out split, causality, the full-catalogue metrics, learning."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from raytrain.data.sequences import from_columns, leave_one_out
from raytrain.errors import DataError
from raytrain.models.sequential import SequentialModel
from raytrain.train.sequential.ranking import eval_batches, most_popular, pretrain, rank_metrics

ROOT = Path(__file__).resolve().parents[2]
CFG = SimpleNamespace(heads=2, blocks=2, max_len=12, dropout=0.0)


def test_histories_are_time_ordered_per_user_and_the_split_holds_out_the_last_two():
    user = np.array([7, 3, 7, 7, 3, 3, 7, 9, 9])
    item = np.array([50, 10, 20, 30, 40, 60, 10, 20, 30])
    ts = np.array([5, 2, 1, 3, 1, 9, 4, 1, 2])
    seqs = from_columns(user, item, ts)
    # user 3: times 1, 2, 9 -> items 40, 10, 60; user 7: times 1, 3, 4, 5 -> 20, 30, 10, 50 (ids remapped to 1..n)
    back = {v: k for k, v in zip(sorted(set(item)), range(1, 7))}
    hist = [[back[int(i)] for i in seqs.items[a:b]] for a, b in zip(seqs.offsets[:-1], seqs.offsets[1:])]
    assert hist == [[40, 10, 60], [20, 30, 10, 50], [20, 30]] and seqs.num_items == 7
    split = leave_one_out(seqs)
    assert split.test_history.users == 2  # user 9 has two actions: left out
    assert [back[int(i)] for i in split.test_target] == [60, 50]
    assert [back[int(i)] for i in split.validation_target] == [10, 10]
    assert split.train.lengths().tolist() == [1, 2] and split.test_history.lengths().tolist() == [2, 3]
    # no history holds anything at or after the time of the item it predicts
    for hist_seqs, targets in ((split.validation_history, split.validation_target), (split.test_history, split.test_target)):
        for u in range(hist_seqs.users):
            a, b = hist_seqs.offsets[u], hist_seqs.offsets[u + 1]
            target_time = seqs.timestamps[seqs.offsets[u]:seqs.offsets[u + 1]][b - a]
            assert (hist_seqs.timestamps[a:b] <= target_time).all()
    with pytest.raises(DataError, match="the item column must hold integers"):
        from_columns(user, item.astype(float), ts)
    with pytest.raises(DataError, match="no user has 3 or more actions"):
        leave_one_out(from_columns(np.array([1, 1]), np.array([1, 2]), np.array([1, 2])))


@pytest.mark.parametrize("arch", ["sasrec", "hstu"])
def test_a_position_sees_only_earlier_actions(arch):
    from raytrain.data.sequences import Sequences

    torch.manual_seed(0)
    model = SequentialModel(arch, 30, 8, CFG).eval()
    offsets = np.array([0, 6])
    same_past = Sequences(np.array([3, 5, 7, 9, 11, 13]), np.arange(6) * 100, offsets, 30)
    other_future = Sequences(np.array([3, 5, 7, 2, 4, 6]), np.arange(6) * 100 + np.r_[0, 0, 0, 7, 9, 9], offsets, 30)
    outs = []
    for s in (same_past, other_future):
        (_, batch), = list(eval_batches(s, 4, CFG.max_len))
        with torch.no_grad():
            outs.append(model(*batch.inputs())[0])
    assert torch.allclose(outs[0][:3], outs[1][:3], atol=1e-6)  # positions 0-2: the same past
    assert not torch.allclose(outs[0][3:], outs[1][3:])


def test_rank_metrics_match_a_brute_force_ranking_with_seen_items_excluded():
    g = torch.Generator().manual_seed(1)
    queries, items = torch.randn(40, 6, generator=g), torch.randn(25, 6, generator=g)
    seqs = from_columns(np.repeat(np.arange(40), 3), np.random.default_rng(0).integers(1, 25, 120), np.tile([1, 2, 3], 40))
    # from_columns remaps ids; keep them as given by building targets among the remapped ids
    targets = np.random.default_rng(1).integers(1, seqs.num_items, 40)
    items = items[:seqs.num_items]
    got = rank_metrics(queries, items, targets, seqs)
    ranks = []
    for u in range(40):
        s = (queries[u] @ items.T).clone()
        s[0] = float("-inf")
        seen = seqs.items[seqs.offsets[u]:seqs.offsets[u + 1]]
        s[torch.from_numpy(seen)] = float("-inf")
        if targets[u] in seen:
            ranks.append(np.inf)  # a seen target is never recommended: a miss at every K, no reciprocal rank
            continue
        ranks.append(int((s > s[targets[u]]).sum()) + 1)
    ranks = np.array(ranks, dtype=float)
    assert got["hr@10"] == pytest.approx(np.mean(ranks <= 10))
    assert got["ndcg@10"] == pytest.approx(np.mean(np.where(ranks <= 10, 1 / np.log2(ranks + 1), 0)), abs=1e-6)
    finite = np.where(np.isfinite(ranks), 1 / ranks, 0.0)
    assert got["mrr"] == pytest.approx(finite.mean(), abs=1e-6)


def test_both_models_learn_a_next_item_rule_far_above_the_most_popular_baseline():
    # each user walks the catalogue from a random start: the next item is always the current one + 1
    rng = np.random.default_rng(0)
    users, length, n = 120, 10, 40
    starts = rng.integers(1, n - length, users)
    item = np.concatenate([np.arange(s, s + length) for s in starts])
    seqs = from_columns(np.repeat(np.arange(users), length), item, np.tile(np.arange(length) * 60, users))
    split = leave_one_out(seqs)
    popular = most_popular(split)
    for arch in ("sasrec", "hstu"):
        torch.manual_seed(0)
        model = SequentialModel(arch, split.train.num_items, 16, CFG)
        out = pretrain(model, split, epochs=30, users_per_batch=32, lr=5e-3, negatives=16, temperature=0.1,
                       eval_every=10)
        assert out["test"]["ndcg@10"] > 0.9 > 3 * popular["ndcg@10"], (arch, out["test"], popular)


def test_warm_start_maps_tables_by_name_and_refuses_mismatches_naming_them():
    from raytrain.errors import CheckpointError
    from raytrain.spec.training import InitFromSpec
    from raytrain.train.warm_start import plan_copy

    source = {"model.item_table.embeddings.t_item.weight": (1683, 16), "model.blocks.0.uvqk.weight": (64, 16),
              "optim.item_table.embeddings.t_item.weight.momentum1": (1683, 16)}
    target = {"sparse_arch.embedding_bag_collection.embedding_bags.t_item_id.weight": (1683, 16),  # this model's
              "sparse_arch.embedding_bag_collection.embedding_bags.t_user_id.weight": (944, 16),  # state dict keys
              "over_arch.model.0.weight": (64, 16)}
    cfg = InitFromSpec(run="r", tables={"t_item_id": "t_item"})
    got = plan_copy(cfg, source, target)
    assert got == {"sparse_arch.embedding_bag_collection.embedding_bags.t_item_id.weight":
                   ("model.item_table.embeddings.t_item.weight", (1683, 16))}
    with pytest.raises(CheckpointError, match="t_user_id: the run has no table 't_user' .*free"):
        plan_copy(InitFromSpec(run="r", tables={"t_user_id": "t_user"}), source, target)
    assert plan_copy(InitFromSpec(run="r", tables={"t_user_id": "t_user"}, free=["t_user_id"]), source, target) == {}
    with pytest.raises(CheckpointError, match="t_user_id: 944 rows here, 1683 in the run's t_item"):
        plan_copy(InitFromSpec(run="r", tables={"t_user_id": "t_item"}), source, target)
    wide = {"model.item_table.embeddings.t_item.weight": (1683, 32)}
    with pytest.raises(CheckpointError, match="width 16 here, 32 in the run's t_item; .*truncate"):
        plan_copy(cfg, wide, target)
    assert plan_copy(cfg.model_copy(update={"dims": "truncate"}), wide, target)
    with pytest.raises(CheckpointError, match="this model has no table 't_movie'"):
        plan_copy(InitFromSpec(run="r", tables={"t_movie": "t_item"}), source, target)
    # all: every tensor of the same name and size as well (continuing a run of the same model)
    same = {"model.over_arch.model.0.weight": (64, 16), "model.over_arch.model.1.weight": (1, 64)}
    assert set(plan_copy(InitFromSpec(run="r", all=True), same, target)) == {"over_arch.model.0.weight"}


def test_parquet_histories_read_the_declared_columns_and_refuse_bad_ones(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raytrain.data.sequences import parquet_sequences

    path = tmp_path / "actions.parquet"
    pq.write_table(pa.table({"uid": [1, 1, 1, 2, 2, 2], "movie": [5, 9, 7, 9, 5, 3], "ts": [3, 1, 2, 1, 2, 3],
                             "stars": [4, 5, 3, 1, 2, 5], "other": ["a"] * 6}), path)
    seqs = parquet_sequences([str(path)], "uid", "movie", "ts", "stars", num_items=10)
    assert seqs.items.tolist() == [9, 7, 5, 9, 5, 3] and seqs.actions.tolist() == [5, 3, 4, 1, 2, 5]
    assert seqs.num_items == 10  # ids kept as they are: the id space another model shares
    with pytest.raises(DataError, match=r"item id 9 outside \[1, 8\)"):
        parquet_sequences([str(path)], "uid", "movie", "ts", num_items=8)
    with pytest.raises(DataError, match="cannot read columns uid, title, ts"):
        parquet_sequences([str(path)], "uid", "title", "ts")
    pq.write_table(pa.table({"uid": [1, None], "movie": [5, 9], "ts": [3, 1]}), tmp_path / "nulls.parquet")
    with pytest.raises(DataError, match="column 'uid' has nulls"):
        parquet_sequences([str(tmp_path / "nulls.parquet")], "uid", "movie", "ts")


def test_distillation_loss_is_the_tempered_kl_over_the_candidates_and_the_teacher_mixes_it_in():
    from raytrain.models.sequential import distill_loss
    from raytrain.train.sequential.ranking import train_batches
    from raytrain.train.sequential.teacher import SequenceTeacher

    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    student[0, 2] = teacher[0, 2] = float("-inf")  # a masked candidate counts for nothing
    t = 2.0
    p, q = torch.softmax(teacher / t, 1), torch.log_softmax(student / t, 1)
    manual = sum(float(p[i, j] * (torch.log(p[i, j]) - q[i, j])) for i in range(5) for j in range(4) if p[i, j] > 0)
    assert float(distill_loss(student, teacher, t)) == pytest.approx(manual / 5 * t**2, rel=1e-5)
    assert float(distill_loss(teacher, teacher, t)) == pytest.approx(0.0, abs=1e-6)

    cfg = SimpleNamespace(max_len=8, blocks=1, heads=1, dropout=0.0)
    torch.manual_seed(0)
    model = SequentialModel("hstu", 30, 8, cfg).eval()
    seqs = from_columns(np.repeat(np.arange(4), 6), np.tile(np.arange(1, 7), 4), np.arange(24))
    batch = next(train_batches(seqs, 4, 8, 5, np.random.default_rng(0)))
    from raytrain.models.sequential import candidate_logits
    from raytrain.train.sequential.ranking import next_item_loss

    hard, logits = next_item_loss(model, batch, 0.1)
    same = SequenceTeacher(model, 0.1, 0.5, 2.0)  # a teacher identical to the student adds nothing
    assert float(same.mix(hard, logits, batch)) == pytest.approx(0.5 * float(hard), rel=1e-5)
    other = SequentialModel("hstu", 30, 8, cfg).eval()
    soft_only = SequenceTeacher(other, 0.1, 0.0, 2.0)
    with torch.no_grad():
        t_user, t_looked = other(*batch.inputs())
        t_logits = candidate_logits(t_user, t_looked["target"], t_looked["negative"], batch.targets, batch.negatives,
                                    0.1)
    expected = float(distill_loss(logits, t_logits, 2.0))
    assert expected > 1e-3 and float(soft_only.mix(hard, logits, batch)) == pytest.approx(expected, rel=1e-5)


def test_action_ids_join_the_item_tokens_causally_and_are_checked():
    from raytrain.data.sequences import Sequences

    cfg = SimpleNamespace(max_len=8, blocks=2, heads=1, dropout=0.0, actions=6)
    torch.manual_seed(0)
    model = SequentialModel("hstu", 30, 8, cfg).eval()
    offsets = np.array([0, 6])

    def encode(actions):
        s = Sequences(np.array([3, 5, 7, 9, 11, 13]), np.arange(6) * 100, offsets, 30, np.array(actions))
        (_, batch), = list(eval_batches(s, 4, cfg.max_len))
        with torch.no_grad():
            return model(*batch.inputs())[0]

    base = encode([5, 4, 5, 1, 2, 3])
    later = encode([5, 4, 5, 1, 2, 5])  # only the last action differs: the positions before it see the same
    earlier = encode([1, 4, 5, 1, 2, 3])  # the first action differs: every position after it changes
    assert torch.allclose(base[:5], later[:5], atol=1e-6) and not torch.allclose(base[5], later[5])
    assert not torch.allclose(base[1:], earlier[1:])
    plain = SequentialModel("hstu", 30, 8, SimpleNamespace(max_len=8, blocks=2, heads=1, dropout=0.0)).eval()
    assert plain.action_table is None  # actions: 0 (the default) reads none


def test_parquet_actions_outside_the_declared_range_are_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raytrain.errors import SpecError
    from raytrain.spec import parse_spec
    from raytrain.train.sequential.run import write_sequences

    pq.write_table(pa.table({"user_id": [1, 1, 1, 2, 2, 2], "item_id": [1, 2, 3, 1, 2, 3],
                             "timestamp": [1, 2, 3, 1, 2, 3], "stars": [1, 5, 9, 2, 3, 4]}), tmp_path / "h.parquet")

    def spec(action, actions):
        return parse_spec({"name": "a", "data": {"source": "parquet", "path": str(tmp_path / "h.parquet"),
                                                 "sequences": {"action": action}},
                           "model": {"arch": "hstu", "embedding_dim": 8, "sequence": {"actions": actions}}})

    with pytest.raises(DataError, match=r"action id 9 outside \[0, 6\)"):
        write_sequences(spec("stars", 6), tmp_path)
    assert np.load(write_sequences(spec("stars", 10), tmp_path))["actions"].tolist() == [1, 5, 9, 2, 3, 4]
    with pytest.raises(SpecError, match="declares no action column"):
        spec(None, 6)


def test_negatives_all_is_a_full_softmax_over_the_catalogue():
    """``negatives="all"``: every step's negatives are the whole catalogue (no padding id), and the loss equals the
    cross-entropy of each position's next item against every item's score, computed here from the item table."""
    from raytrain.train.sequential.ranking import next_item_loss, train_batches

    rng = np.random.default_rng(1)
    users, length, n = 6, 7, 15
    seqs = from_columns(np.repeat(np.arange(users), length), rng.integers(1, n, users * length),
                        np.tile(np.arange(length), users))
    split = leave_one_out(seqs)
    torch.manual_seed(0)
    model = SequentialModel("sasrec", split.train.num_items, 8, CFG).eval()
    batch = next(train_batches(split.train, users, CFG.max_len, "all", rng, in_batch=3))
    assert batch.negatives.tolist() == list(range(1, split.train.num_items))
    with torch.no_grad():
        loss, logits = next_item_loss(model, batch, temperature=0.5)
        user, _ = model(*batch.inputs())
        scores = user @ model.item_embeddings()[1:].T / 0.5  # every real item (the table row 0 is padding)
        full = torch.nn.functional.cross_entropy(scores, batch.targets - 1)
    assert logits.shape == (len(batch.targets), split.train.num_items)
    assert torch.allclose(loss, full, atol=1e-5), (loss, full)


def test_negatives_auto_is_the_full_softmax_up_to_the_threshold_and_sampled_above():
    from raytrain.spec import load_spec
    from raytrain.spec.training import SampledSoftmaxSpec
    from raytrain.train.sequential.ranking import FULL_SOFTMAX_MAX_ITEMS, resolve_negatives, train_batches

    assert SampledSoftmaxSpec().negatives == "auto"
    spec = load_spec(ROOT / "jobs/pretrain_hstu_ml100k.yaml", ["train.sampled_softmax.negatives=auto"])
    assert spec.train.sampled_softmax.negatives == "auto"
    ids = FULL_SOFTMAX_MAX_ITEMS + 1  # the padding id and FULL_SOFTMAX_MAX_ITEMS items
    assert resolve_negatives("auto", ids) == "all" and resolve_negatives("auto", ids + 1) == 128
    assert resolve_negatives(7, 10) == 7 and resolve_negatives("all", 10**7) == "all"
    rng = np.random.default_rng(0)
    small = from_columns(np.repeat(np.arange(3), 5), rng.integers(1, 40, 15), np.tile(np.arange(5), 3))
    batch = next(train_batches(small, 3, CFG.max_len, "auto", rng))
    assert batch.negatives.tolist() == list(range(1, small.num_items))
