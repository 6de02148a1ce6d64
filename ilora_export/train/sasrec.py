"""Stage 1: training SASRec from scratch when no pretrained one is given.

Next-item cross-entropy over the ``s_fc`` logits of the whole catalogue, Adam with L2 weight decay
(the official recipe's optimiser). Seeded: the same data, config and seed give the same weights.
"""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ilora_export.errors import DataError
from ilora_export.model.sasrec import SASRec
from ilora_export.train.recipe import SASRecConfig


def _item(value) -> int:
    # MovieLens frames store (item, rating) pairs.
    return int(value[0]) if isinstance(value, (tuple, list)) else int(value)


def frame_tensors(df: pd.DataFrame, num_items: int, name: str = "data") -> tuple[torch.Tensor, ...]:
    """``seq`` [N, L], ``len_seq`` [N], ``next`` [N] as int64 tensors, validated."""
    missing = {"seq", "len_seq", "next"} - set(df.columns)
    if missing:
        raise DataError(f"{name}: missing column(s) {sorted(missing)}")
    if len(df) == 0:
        raise DataError(f"{name}: no rows")
    seqs = [[_item(v) for v in s] for s in df["seq"]]
    if len({len(s) for s in seqs}) != 1:
        raise DataError(f"{name}: sequences of different lengths", hint="Pad every seq to one length.")
    seq = torch.tensor(seqs, dtype=torch.int64)
    len_seq = torch.tensor([int(v) for v in df["len_seq"]], dtype=torch.int64)
    nxt = torch.tensor([_item(v) for v in df["next"]], dtype=torch.int64)
    if seq.min() < 0 or seq.max() > num_items:
        raise DataError(f"{name}: item ids outside 0..{num_items} (the padding id is {num_items})")
    if nxt.min() < 0 or nxt.max() >= num_items:
        raise DataError(f"{name}: next-item ids outside 0..{num_items - 1}")
    if len_seq.min() < 1 or len_seq.max() > seq.shape[1]:
        raise DataError(f"{name}: len_seq outside 1..{seq.shape[1]}")
    return seq, len_seq, nxt


@torch.no_grad()
def hit_ratios(
    model: SASRec,
    seq: torch.Tensor,
    len_seq: torch.Tensor,
    nxt: torch.Tensor,
    ks: tuple[int, ...] = (1, 5),
    batch_size: int = 1024,
) -> dict[str, float]:
    """HitRatio@k of the full-catalogue ranking (rank = number of items scored above the target)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    hits = torch.zeros(len(ks))
    for i in range(0, len(seq), batch_size):
        logits = model(seq[i : i + batch_size].to(device), len_seq[i : i + batch_size].to(device))  # [b, I]
        target = logits.gather(1, nxt[i : i + batch_size].to(device)[:, None])  # [b, 1]
        rank = (logits > target).sum(1).cpu()  # [b]
        hits += torch.stack([(rank < k).sum() for k in ks]).float()
    model.train(was_training)
    return {f"HitRatio@{k}": float(h) / len(seq) for k, h in zip(ks, hits)}


def train_sasrec(
    train_df: pd.DataFrame,
    num_items: int,
    cfg: SASRecConfig,
    *,
    seed: int,
    valid_df: pd.DataFrame | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[SASRec, dict]:
    """Train a SASRec on ``train_df``; returns the model (eval mode, on ``device``) and a history.

    History: ``losses`` (mean loss per epoch) and, with ``valid_df``, ``valid`` (per-epoch hit
    ratios) plus the final ``HitRatio@1`` / ``HitRatio@5``.
    """
    seq, len_seq, nxt = frame_tensors(train_df, num_items, "train data")
    valid = frame_tensors(valid_df, num_items, "validation data") if valid_df is not None else None
    if valid is not None and valid[0].shape[1] != seq.shape[1]:
        raise DataError("validation sequences are not as long as the training sequences")
    device = torch.device(device)
    config = {k: v for k, v in asdict(cfg).items() if k != "pretrained"}
    history: dict = {"config": config, "seed": seed, "losses": []}
    if valid is not None:
        history["valid"] = []
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        model = SASRec(num_items, cfg.hidden, seq.shape[1], cfg.num_heads, cfg.dropout).to(device)
        optim = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        order_gen = torch.Generator().manual_seed(seed)
        bar = tqdm(range(cfg.epochs), desc="SASRec", unit="epoch", disable=not progress)
        for epoch in bar:
            model.train()
            total = 0.0
            for idx in torch.randperm(len(seq), generator=order_gen).split(cfg.batch_size):
                logits = model(seq[idx].to(device), len_seq[idx].to(device))  # [b, I]
                loss = F.cross_entropy(logits, nxt[idx].to(device))
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                total += loss.detach().item() * len(idx)
            history["losses"].append(total / len(seq))
            postfix = {"loss": f"{history['losses'][-1]:.4f}"}
            if valid is not None:
                metrics = hit_ratios(model, *valid)
                history["valid"].append({"epoch": epoch + 1, **metrics})
                postfix.update({k.replace("HitRatio", "HR"): f"{v:.3f}" for k, v in metrics.items()})
            bar.set_postfix(postfix)
    model.eval()
    if valid is not None:
        history.update(hit_ratios(model, *valid))
    return model, history
