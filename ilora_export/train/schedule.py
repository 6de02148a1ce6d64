"""Optimiser, learning-rate schedule and curriculum of fine-tuning (``train.schedule``).

``cosine`` (the default): AdamW over every trainable tensor, linear warm-up over ``warmup_steps``, then
cosine to 0.1 lr; gradients clipped to ``max_grad_norm``.

``official``: the official iLoRA training (``model/model_interface.py``, ``optims.py``,
``data/data_interface.py``), step for step:

- Adam (L2 weight decay) with three parameter groups: the projector (lr, ``weight_decay``), the gating
  network (``gate_lr_scale`` x lr, ``weight_decay``) and the expert bank (lr, no weight decay);
- the learning rate of optimizer step s (0-based), per group scaled alike: during the first epoch and
  s < max_steps // 20, ``min(lr, start + (lr - start) * s / warmup)`` from ``warmup_start_lr``; after it,
  cosine from lr at s = warmup to ``min_lr`` (default lr / 100) at s = max_steps;
- no gradient clipping;
- a curriculum: micro-batch c (1-based, of C = max_steps x grad_accum) holds text-only prompts
  (``[PH]`` after each title, no item embeddings, the projector unused) with probability 1 - c / (C + 1);
- the answer tokenised as the second sequence of a pair (a second BOS on Llama; labels BOS + title + newline).
"""

from __future__ import annotations

import math

import numpy as np
import torch

SCHEDULES = ("cosine", "official")


def cosine_lambda(warmup: int, total: int):
    """The default schedule as a multiplier of lr: linear warm-up, then cosine to 0.1."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def official_lr(step: int, *, lr: float, start: float, floor: float, warmup: int, total: int, epoch: int) -> float:
    """The official learning rate of optimizer step ``step`` (0-based) in ``epoch``."""
    if epoch == 0 and step < warmup:
        return min(lr, start + (lr - start) * step / max(warmup, 1))
    return (lr - floor) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) + floor


def param_groups(model, tc) -> list[dict]:
    """The optimiser's parameter groups, each with its ``lr`` and ``weight_decay`` (and a ``name``)."""
    params = model.trainable_parameters()
    if tc.schedule != "official":
        return [{"name": "adapter", "params": list(params.values()), "lr": tc.lr, "weight_decay": tc.weight_decay}]
    by_part = {"projector": [], "gate_net": [], "llm": []}
    for name, p in params.items():
        by_part[name.split(".", 1)[0]].append(p)
    return [
        {"name": "projector", "params": by_part["projector"], "lr": tc.lr, "weight_decay": tc.weight_decay},
        {
            "name": "gate",
            "params": by_part["gate_net"],
            "lr": tc.lr * tc.gate_lr_scale,
            "weight_decay": tc.weight_decay,
        },
        {"name": "experts", "params": by_part["llm"], "lr": tc.lr, "weight_decay": 0.0},
    ]


def build_optimizer(model, tc, *, examples_per_epoch: int):
    """(optimizer, scheduler) of ``tc.schedule``; the scheduler is stepped once per optimizer step."""
    groups = param_groups(model, tc)
    if tc.schedule != "official":
        optimizer = torch.optim.AdamW(groups[0]["params"], lr=tc.lr, weight_decay=tc.weight_decay)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lambda(tc.warmup_steps, tc.max_steps))
    optimizer = torch.optim.Adam([{k: v for k, v in g.items() if k != "name"} for g in groups])
    per_step = tc.batch_size * tc.grad_accum
    floor = tc.min_lr if tc.min_lr is not None else tc.lr / 100

    def multiplier(step: int) -> float:  # of each group's own lr: start, lr and floor all scale alike
        epoch = step * per_step // max(1, examples_per_epoch)
        warmup = tc.max_steps // 20
        lr = official_lr(
            step, lr=tc.lr, start=tc.warmup_start_lr, floor=floor, warmup=warmup, total=tc.max_steps, epoch=epoch
        )
        return lr / tc.lr

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


def clips_gradients(tc) -> bool:
    return tc.schedule != "official"


def text_only(seed: int, micro_batch: int, total_micro_batches: int) -> bool:
    """Whether micro-batch ``micro_batch`` (0-based) of the official curriculum holds text-only prompts: a
    pure function of (seed, index), so a resumed run draws what an uninterrupted one does."""
    p = np.random.default_rng([seed, 3, micro_batch]).random()
    return not p < (micro_batch + 1) / (total_micro_batches + 1)
