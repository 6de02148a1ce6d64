"""SASRec against a literal, loop-based transcription of the official formula (``cacul_h``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ilora_export.errors import CheckpointError
from ilora_export.model.sasrec import SASRec
from ilora_export.official.sasrec import load_official_sasrec
from tests.factories import REF_DIR

OFFICIAL_PT = REF_DIR / "rec_model/lastfm.pt"
needs_ref = pytest.mark.skipif(
    not OFFICIAL_PT.is_file(), reason=f"official reference files not found under {REF_DIR} (set ILORA_REF_DIR)"
)


# ---------------------------------------------------------------- the official maths, transcribed


def official_attention(p, queries, keys, hidden, num_heads):
    """The official MultiHeadAttention.forward, step by step (eval mode: dropout is identity)."""
    Q = F.linear(queries, p["mh_attn.linear_q.weight"], p["mh_attn.linear_q.bias"])
    K = F.linear(keys, p["mh_attn.linear_k.weight"], p["mh_attn.linear_k.bias"])
    V = F.linear(keys, p["mh_attn.linear_v.weight"], p["mh_attn.linear_v.bias"])
    split_size = hidden // num_heads
    Q_ = torch.cat(torch.split(Q, split_size, dim=2), dim=0)
    K_ = torch.cat(torch.split(K, split_size, dim=2), dim=0)
    V_ = torch.cat(torch.split(V, split_size, dim=2), dim=0)
    matmul_output = torch.bmm(Q_, K_.transpose(1, 2)) / hidden**0.5
    key_mask = torch.sign(torch.abs(keys.sum(dim=-1))).repeat(num_heads, 1)
    key_mask_reshaped = key_mask.unsqueeze(1).repeat(1, queries.shape[1], 1)
    key_paddings = torch.ones_like(matmul_output) * (-(2**32) + 1)
    matmul_output_m1 = torch.where(torch.eq(key_mask_reshaped, 0), key_paddings, matmul_output)
    diag_vals = torch.ones_like(matmul_output[0, :, :])
    tril = torch.tril(diag_vals)
    causality_mask = tril.unsqueeze(0).repeat(matmul_output.shape[0], 1, 1)
    causality_paddings = torch.ones_like(causality_mask) * (-(2**32) + 1)
    matmul_output_m2 = torch.where(torch.eq(causality_mask, 0), causality_paddings, matmul_output_m1)
    matmul_output_sm = torch.softmax(matmul_output_m2, dim=-1)
    query_mask = torch.sign(torch.abs(queries.sum(dim=-1))).repeat(num_heads, 1)
    query_mask = query_mask.unsqueeze(-1).repeat(1, 1, keys.shape[1])
    matmul_output_qm = matmul_output_sm * query_mask
    output_ws = torch.bmm(matmul_output_qm, V_)
    output = torch.cat(torch.split(output_ws, output_ws.shape[0] // num_heads, dim=0), dim=2)
    return output + queries


def official_feed_forward(p, x, hidden, eps):
    residual = x
    output = x.transpose(1, 2)
    output = F.conv1d(output, p["feed_forward.w_1.weight"], p["feed_forward.w_1.bias"])
    output = F.conv1d(F.relu(output), p["feed_forward.w_2.weight"], p["feed_forward.w_2.bias"])
    output = output.transpose(1, 2)
    return F.layer_norm(
        output + residual, (hidden,), p["feed_forward.layer_norm.weight"], p["feed_forward.layer_norm.bias"], eps
    )


def official_cacul_h(p, states, len_states, *, item_num, state_size, hidden, num_heads, eps=1e-5):
    """The official SASRec.cacul_h in eval mode: [B, 1, H]."""
    inputs_emb = F.embedding(states, p["item_embeddings.weight"])
    inputs_emb += F.embedding(torch.arange(state_size), p["positional_embeddings.weight"])
    seq = inputs_emb
    mask = torch.ne(states, item_num).float().unsqueeze(-1)
    seq *= mask
    seq_normalized = F.layer_norm(seq, (hidden,), p["ln_1.weight"], p["ln_1.bias"], eps)
    mh_attn_out = official_attention(p, seq_normalized, seq, hidden, num_heads)
    ln_2 = F.layer_norm(mh_attn_out, (hidden,), p["ln_2.weight"], p["ln_2.bias"], eps)
    ff_out = official_feed_forward(p, ln_2, hidden, eps)
    ff_out *= mask
    ff_out = F.layer_norm(ff_out, (hidden,), p["ln_3.weight"], p["ln_3.bias"], eps)
    res = []  # extract_axis_1
    for i in range(ff_out.shape[0]):
        res.append(ff_out[i, len_states[i] - 1, :])
    return torch.stack(res, dim=0).unsqueeze(1)


# ---------------------------------------------------------------- the official file, parsed by torch


def torch_parse_official(path: Path) -> tuple[dict, dict]:
    """Weights and hyperparameters of the official file through torch's own weights-only loader
    (an independent reader: inert record classes registered under the official names)."""

    class Record:
        pass

    names = [
        "__main__.SASRec",
        "SASRecModules_ori.MultiHeadAttention",
        "SASRecModules_ori.PositionwiseFeedForward",
        *(
            f"torch.nn.modules.{m}"
            for m in (
                "dropout.Dropout",
                "sparse.Embedding",
                "normalization.LayerNorm",
                "linear.Linear",
                "conv.Conv1d",
                "activation.Softmax",
            )
        ),
    ]
    safe = [(type(n.rsplit(".", 1)[1], (Record,), {}), n) for n in names]
    safe += [(np._core.multiarray.scalar, "numpy.core.multiarray.scalar"), np.dtype, type(np.dtype("int64"))]
    with torch.serialization.safe_globals(safe):
        root = torch.load(path, weights_only=True, map_location="cpu")

    weights = {}

    def walk(rec, prefix):
        for name, value in rec._parameters.items():
            weights[prefix + name] = value.detach()
        for name, child in rec._modules.items():
            walk(child, f"{prefix}{name}.")

    walk(root, "")
    hparams = {
        "item_num": int(root.item_num),
        "state_size": int(root.state_size),
        "hidden": int(root.hidden_size),
        "num_heads": int(root._modules["mh_attn"].num_heads),
        "eps": float(root._modules["ln_1"].eps),
    }
    return weights, hparams


@pytest.fixture(scope="module")
def official():
    if not OFFICIAL_PT.is_file():
        pytest.skip(f"official reference files not found under {REF_DIR} (set ILORA_REF_DIR)")
    return load_official_sasrec(OFFICIAL_PT), *torch_parse_official(OFFICIAL_PT)


@pytest.fixture(scope="module")
def lastfm_test_rows():
    df = pd.read_pickle(REF_DIR / "data/lastfm/Test_data.df")
    seq = torch.tensor(df["seq"].tolist(), dtype=torch.int64)
    return (
        seq,
        torch.tensor(df["len_seq"].to_numpy(), dtype=torch.int64),
        torch.tensor(df["next"].to_numpy(), dtype=torch.int64),
    )


@needs_ref
def test_official_weights_and_hyperparameters(official):
    model, weights, hp = official
    assert model.config() == {"item_num": 4606, "hidden": 64, "state_size": 10, "num_heads": 1, "dropout": 0.1}
    assert hp["item_num"] == 4606 and hp["hidden"] == 64
    ours = model.state_dict()
    assert set(ours) == set(weights)
    for name, value in weights.items():
        assert torch.equal(ours[name], value), name
    assert not model.training


@needs_ref
def test_official_user_representation_matches_official_formula(official, lastfm_test_rows):
    model, weights, hp = official
    seq, len_seq, _ = lastfm_test_rows
    with torch.no_grad():
        ours = model.user_representation(seq, len_seq)
        ref = official_cacul_h(
            weights,
            seq,
            len_seq,
            item_num=hp["item_num"],
            state_size=hp["state_size"],
            hidden=hp["hidden"],
            num_heads=hp["num_heads"],
            eps=hp["eps"],
        )
    assert ours.shape == (len(seq), 64)
    torch.testing.assert_close(ours, ref.squeeze(1), atol=1e-6, rtol=0)


@needs_ref
def test_official_scores_rank_next_items_far_above_chance(official, lastfm_test_rows):
    model, weights, _ = official
    seq, len_seq, nxt = lastfm_test_rows
    with torch.no_grad():
        logits = model(seq, len_seq)
        user = model.user_representation(seq, len_seq)
    torch.testing.assert_close(logits, user @ weights["s_fc.weight"].T + weights["s_fc.bias"])
    rank = (logits > logits.gather(1, nxt[:, None])).sum(1)
    hr20 = (rank < 20).float().mean().item()
    assert hr20 > 10 * 20 / 4606  # chance is 0.4%


# ---------------------------------------------------------------- random weights, any shape


def _random_model(seed=0, **kw) -> SASRec:
    torch.manual_seed(seed)
    cfg = {"item_num": 30, "hidden": 16, "state_size": 6, "num_heads": 2, "dropout": 0.3} | kw
    model = SASRec(**cfg)
    with torch.no_grad():
        for p in model.parameters():  # move LayerNorms/biases off their trivial init
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _random_batch(model: SASRec, batch=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    L = model.state_size
    len_seq = torch.randint(1, L + 1, (batch,), generator=g)
    seq = torch.randint(0, model.item_num, (batch, L), generator=g)
    seq[torch.arange(L)[None, :] >= len_seq[:, None]] = model.item_num  # pad at the end
    return seq, len_seq


@pytest.mark.parametrize("num_heads", [1, 2, 4])
def test_user_representation_matches_official_formula_multi_head(num_heads):
    model = _random_model(num_heads=num_heads)
    seq, len_seq = _random_batch(model)
    with torch.no_grad():
        ref = official_cacul_h(
            model.state_dict(), seq, len_seq, item_num=30, state_size=6, hidden=16, num_heads=num_heads
        )
        torch.testing.assert_close(model.user_representation(seq, len_seq), ref.squeeze(1), atol=1e-6, rtol=0)


def test_zero_length_reads_the_last_position_like_official_indexing():
    model = _random_model()
    seq, len_seq = _random_batch(model)
    len_seq[0] = 0
    with torch.no_grad():
        ref = official_cacul_h(model.state_dict(), seq, len_seq, item_num=30, state_size=6, hidden=16, num_heads=2)
        torch.testing.assert_close(model.user_representation(seq, len_seq), ref.squeeze(1), atol=1e-6, rtol=0)


def test_padding_row_and_batch_neighbours_do_not_matter():
    model = _random_model()
    seq, len_seq = _random_batch(model)
    with torch.no_grad():
        full = model.user_representation(seq, len_seq)
        rows = torch.cat([model.user_representation(seq[i : i + 1], len_seq[i : i + 1]) for i in range(len(seq))])
        model.item_embeddings.weight[model.item_num] = 100.0
        repadded = model.user_representation(seq, len_seq)
    torch.testing.assert_close(full, rows, atol=1e-6, rtol=0)
    torch.testing.assert_close(full, repadded, atol=1e-6, rtol=0)


def test_forward_candidates_items_and_config():
    model = _random_model()
    seq, len_seq = _random_batch(model)
    cands = torch.randint(0, 30, (len(seq), 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(seq, len_seq)
        user = model.user_representation(seq, len_seq)
        scores = model.score_candidates(seq, len_seq, cands)
    assert logits.shape == (7, 30)
    torch.testing.assert_close(logits, user @ model.s_fc.weight.T + model.s_fc.bias)
    torch.testing.assert_close(scores, logits.gather(1, cands))
    ids = torch.tensor([[0, 29], [30, 3]])
    assert torch.equal(model.item_embedding(ids), model.item_embeddings.weight[ids])
    clone = SASRec(**model.config())
    clone.load_state_dict(model.state_dict(), strict=True)


def test_dropout_only_in_training_mode():
    model = _random_model(dropout=0.5)
    seq, len_seq = _random_batch(model)
    with torch.no_grad():
        a, b = model.user_representation(seq, len_seq), model.user_representation(seq, len_seq)
        model.train()
        c = model.user_representation(seq, len_seq)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_exported_graph_follows_batch_size_and_lengths():
    """No python loop over the batch, no ``.item()``: the graph exports with a dynamic batch."""
    model = _random_model()

    class UserRepr(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, seq, len_seq):
            return self.model.user_representation(seq, len_seq)

    seq, len_seq = _random_batch(model, batch=3)
    batch = torch.export.Dim("batch")
    exported = torch.export.export(UserRepr(), (seq, len_seq), dynamic_shapes=({0: batch}, {0: batch}))
    for size, seed in ((9, 5), (1, 6)):
        seq2, len2 = _random_batch(model, batch=size, seed=seed)
        with torch.no_grad():
            torch.testing.assert_close(exported.module()(seq2, len2), model.user_representation(seq2, len2))


def test_state_dict_names_follow_the_official_module():
    names = set(SASRec(10).state_dict())
    expected = {"item_embeddings.weight", "positional_embeddings.weight", "s_fc.weight", "s_fc.bias"}
    expected |= {f"ln_{i}.{w}" for i in (1, 2, 3) for w in ("weight", "bias")}
    expected |= {f"mh_attn.linear_{x}.{w}" for x in "qkv" for w in ("weight", "bias")}
    expected |= {f"feed_forward.{m}.{w}" for m in ("w_1", "w_2", "layer_norm") for w in ("weight", "bias")}
    assert names == expected


def test_official_loader_rejects_misfit_weights(tmp_path):
    state = SASRec(12, hidden=8, state_size=4).state_dict()
    state["ln_1.weight"] = torch.ones(9)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_official_sasrec(path)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="list.pt"):
        load_official_sasrec(tmp_path / "list.pt")


def test_official_loader_accepts_a_plain_state_dict(tmp_path):
    model = _random_model(num_heads=1)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    loaded = load_official_sasrec(tmp_path / "sd.pt")
    assert loaded.config()["item_num"] == 30 and loaded.config()["state_size"] == 6
    seq, len_seq = _random_batch(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(seq, len_seq), model(seq, len_seq))
