"""Stage-1 SASRec training on a tiny synthetic, learnable dataset."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from ilora_export.errors import DataError
from ilora_export.train.recipe import SASRecConfig
from ilora_export.train.sasrec import hit_ratios, train_sasrec

NUM_ITEMS = 20
L = 5


def synthetic_frame(rows: int, seed: int) -> pd.DataFrame:
    """Each user walks the catalogue in steps of 1: the next item is ``last + 1`` (mod N)."""
    g = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(rows):
        n = int(torch.randint(2, L + 1, (1,), generator=g))
        start = int(torch.randint(0, NUM_ITEMS, (1,), generator=g))
        items = [(start + i) % NUM_ITEMS for i in range(n)]
        data.append({"seq": items + [NUM_ITEMS] * (L - n), "len_seq": n, "next": (items[-1] + 1) % NUM_ITEMS})
    return pd.DataFrame(data)


CFG = SASRecConfig(hidden=16, num_heads=1, dropout=0.1, epochs=12, batch_size=32, lr=1e-2)


@pytest.fixture(scope="module")
def trained():
    train, valid = synthetic_frame(256, 0), synthetic_frame(64, 1)
    model, history = train_sasrec(train, NUM_ITEMS, CFG, seed=3, valid_df=valid, progress=False)
    return train, valid, model, history


def _hr_by_hand(model, df, k):
    seq = torch.tensor(df["seq"].tolist())
    with torch.no_grad():
        logits = model(seq, torch.tensor(df["len_seq"].to_numpy()))
    hits = 0
    for row, target in zip(logits, df["next"]):
        hits += int(target in row.argsort(descending=True)[:k].tolist())
    return hits / len(df)


def test_training_reduces_the_loss_and_learns_the_pattern(trained):
    _, valid, model, history = trained
    losses = history["losses"]
    assert len(losses) == CFG.epochs
    assert losses[-1] < 0.5 * losses[0]
    assert history["HitRatio@5"] >= history["HitRatio@1"]
    assert history["HitRatio@1"] > 0.5  # chance is 1/20
    assert history["HitRatio@1"] == pytest.approx(_hr_by_hand(model, valid, 1))
    assert history["HitRatio@5"] == pytest.approx(_hr_by_hand(model, valid, 5))
    assert [v["epoch"] for v in history["valid"]] == list(range(1, CFG.epochs + 1))
    assert not model.training
    assert model.config() == {"item_num": NUM_ITEMS, "hidden": 16, "state_size": L, "num_heads": 1, "dropout": 0.1}


def test_training_is_deterministic_and_leaves_the_global_rng_alone(trained):
    train, _, model, history = trained
    short = SASRecConfig(hidden=16, epochs=2, batch_size=32, lr=1e-2)
    before = torch.get_rng_state()
    a, ha = train_sasrec(train, NUM_ITEMS, short, seed=3, progress=False)
    b, hb = train_sasrec(train, NUM_ITEMS, short, seed=3, progress=False)
    c, hc = train_sasrec(train, NUM_ITEMS, short, seed=4, progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    assert ha["losses"] == hb["losses"]
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert ha["losses"] != hc["losses"]
    assert "HitRatio@1" not in ha


def test_hit_ratio_counts_items_scored_above_the_target(trained):
    _, valid, model, _ = trained
    seq = torch.tensor(valid["seq"].tolist())
    lens = torch.tensor(valid["len_seq"].to_numpy())
    nxt = torch.tensor(valid["next"].to_numpy())
    got = hit_ratios(model, seq, lens, nxt, ks=(1, 3, NUM_ITEMS), batch_size=7)
    assert got["HitRatio@20"] == 1.0
    assert got["HitRatio@3"] == pytest.approx(_hr_by_hand(model, valid, 3))


def test_bad_frames_are_data_errors():
    good = synthetic_frame(4, 0)
    with pytest.raises(DataError, match="next"):
        train_sasrec(good.drop(columns=["next"]), NUM_ITEMS, CFG, seed=0, progress=False)
    bad = good.copy()
    bad.loc[0, "next"] = NUM_ITEMS
    with pytest.raises(DataError, match="next-item"):
        train_sasrec(bad, NUM_ITEMS, CFG, seed=0, progress=False)
    bad = good.copy()
    bad.at[0, "seq"] = [NUM_ITEMS + 1] * L
    with pytest.raises(DataError, match="item ids"):
        train_sasrec(bad, NUM_ITEMS, CFG, seed=0, progress=False)
    bad = good.copy()
    bad.loc[0, "len_seq"] = 0
    with pytest.raises(DataError, match="len_seq"):
        train_sasrec(bad, NUM_ITEMS, CFG, seed=0, progress=False)
