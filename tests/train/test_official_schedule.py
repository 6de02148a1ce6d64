"""``train.schedule: official`` against a literal re-implementation of the official iLoRA training step.

The official step (``model/model_interface.py``, ``optims.py``, ``data/data_interface.py``), written out
here on its own: Adam over [projector (lr, wd), router (0.3 lr, wd), the LLM's trainable tensors (lr)],
the per-group warm-up/cosine scheduler stepped with the global step before the forward, the collater's
curriculum (text-only ``[PH]`` prompts with probability 1 - step / max_step), the (prompt, answer) pair
tokenised with token type ids and labels on type 1, no clipping. One step of each must agree.
"""

import copy
import json
import math
import warnings

import numpy as np
import pytest
import torch

from ilora_export.data.llara import load_dataset
from ilora_export.data.prompts import default_templates, render_prompt
from ilora_export.model.prompting import PromptBuilder
from ilora_export.train import schedule
from ilora_export.train.finetune import TrainStream, train_step
from tests.conftest import tiny_recipe
from tests.factories import make_tiny_ilora

MAX_STEPS = 100  # warm-up: 5 steps


class OfficialScheduler:
    """optims.py as the official code has it: per-group lists, set before each training step."""

    def __init__(self, optimizer, min_lrs, init_lrs, warmup, start_lrs):
        self.optimizer, self.min_lrs, self.init_lrs, self.warmup, self.start_lrs = (
            optimizer,
            min_lrs,
            init_lrs,
            warmup,
            start_lrs,
        )

    def step(self, cur_step, cur_epoch, max_step):
        for i, group in enumerate(self.optimizer.param_groups):
            if cur_epoch == 0 and cur_step < self.warmup:
                lr = min(
                    self.init_lrs[i],
                    self.start_lrs[i] + (self.init_lrs[i] - self.start_lrs[i]) * cur_step / max(self.warmup, 1),
                )
            else:
                progress = (cur_step - self.warmup) / (max_step - self.warmup)
                lr = (self.init_lrs[i] - self.min_lrs[i]) * 0.5 * (1 + math.cos(math.pi * progress)) + self.min_lrs[i]
            group["lr"] = lr


def official_step(model, tokenizer, titles, rows, text_only, step, lr, wd, start, floor):
    """One official optimizer step (batch = ``rows``, accumulation 1) on ``model``; (loss, grads, lrs)."""
    optimizer = torch.optim.Adam(
        [
            {"params": model.projector.parameters(), "lr": lr, "weight_decay": wd},
            {"params": model.gate_net.parameters(), "lr": lr * 0.3, "weight_decay": wd},
            {"params": [p for p in model.llm.parameters() if p.requires_grad], "lr": lr},
        ]
    )
    scheduler = OfficialScheduler(
        optimizer, [floor, floor * 0.3, floor], [lr, lr * 0.3, lr], MAX_STEPS // 20, [start, start * 0.3, start]
    )
    scheduler.step(step, 0, MAX_STEPS)  # training_step: the scheduler first (epoch 0 here)
    template = default_templates().templates
    prompts, answers = [], []
    for seq, len_seq, cands, target, tmpl in rows:
        prompts.append(
            render_prompt(
                template[tmpl % len(template)],
                [titles(i) for i in seq[:len_seq]],
                [titles(i) for i in cands],
                text_only=text_only,
            )
        )
        answers.append(titles(target) + "\n")
    tokenizer.padding_side = "right"
    tokens = tokenizer(
        [[p, a] for p, a in zip(prompts, answers)],
        return_tensors="pt",
        padding="longest",
        add_special_tokens=True,
        return_token_type_ids=True,
    )
    targets = tokens.input_ids.masked_fill(tokens.attention_mask == 0, -100)
    targets = targets.masked_fill(tokens.token_type_ids == 0, -100)
    seq = torch.tensor([r[0] for r in rows])
    len_seq = torch.tensor([r[1] for r in rows])
    cands = torch.tensor([r[2] for r in rows])
    optimizer.zero_grad()
    out = model(tokens.input_ids, tokens.attention_mask, seq, len_seq, cands, labels=targets, items=not text_only)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    lrs = [g["lr"] for g in optimizer.param_groups]
    optimizer.step()
    return out.loss.item(), grads, lrs


@pytest.mark.parametrize("step", [2, 80])  # in the warm-up, and in the cosine
def test_one_step_equals_the_official_step(tiny_llama_dir, toy_data_dir, tmp_path, step):
    wd = 0.1  # the recipe's 1e-5, magnified so a decay on the wrong group shows within one step
    recipe = tiny_recipe(
        tiny_llama_dir,
        toy_data_dir,
        tmp_path,
        schedule="official",
        lr=7e-4,
        weight_decay=wd,
        max_steps=MAX_STEPS,
        batch_size=3,
        grad_accum=1,
    )
    tc = recipe.train
    dataset = load_dataset(toy_data_dir)
    model = make_tiny_ilora(tiny_llama_dir, num_items=dataset.catalogue.num_items)
    model.train()
    model.sasrec.eval()
    reference = copy.deepcopy(model)
    stream = TrainStream(dataset.split("train"), dataset.catalogue.num_items, 2, recipe.seed, None)
    builder = PromptBuilder(model.tokenizer, dataset.catalogue.title, default_templates())

    # this project's step, through the same calls finetune makes
    optimizer, scheduler = schedule.build_optimizer(model, tc, examples_per_epoch=10**6)
    for _ in range(step):  # the scheduler of a run that reached ``step`` (no optimizer step needed for that)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
    ours_lrs = [g["lr"] for g in optimizer.param_groups]
    grads = {}
    optimizer.register_step_pre_hook(
        lambda *_: grads.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    )
    loss = train_step(model, builder, stream, optimizer, scheduler, step, tc, recipe.seed, "cpu")

    # the official step on a copy, with the same rows and the collater's draw
    rows = [stream.sample(step * tc.batch_size + i) for i in range(tc.batch_size)]
    p = np.random.default_rng([recipe.seed, 3, step]).random()
    text_only = not p < (step + 1) / (MAX_STEPS + 1)
    ref_loss, ref_grads, ref_lrs = official_step(
        reference, reference.tokenizer, dataset.catalogue.title, rows, text_only, step, 7e-4, wd, 7e-6, 7e-6
    )

    assert ours_lrs == pytest.approx(ref_lrs, rel=1e-12)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert grads.keys() == ref_grads.keys()
    assert any(k.startswith("projector.") for k in grads) == (not text_only)  # text-only: the projector is unused
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-8, msg=name)
    new, ref = dict(model.named_parameters()), dict(reference.named_parameters())
    for name in model.trainable_parameters():
        torch.testing.assert_close(new[name], ref[name], rtol=1e-5, atol=1e-8, msg=name)


def test_both_curriculum_branches_are_covered():
    seed = 3  # the tiny recipe's
    flags = [schedule.text_only(seed, s, MAX_STEPS) for s in (2, 80)]
    assert flags == [True, False]  # the equivalence test above sees a text-only step and an item step


def test_the_official_learning_rate_curve():
    lr, floor, start, total = 7e-4, 7e-6, 7e-6, 105

    def at(step, epoch=0):
        return schedule.official_lr(step, lr=lr, start=start, floor=floor, warmup=5, total=total, epoch=epoch)

    assert at(0) == start and at(4) == pytest.approx(start + (lr - start) * 4 / 5)
    assert at(5) == pytest.approx(lr) and at(total) == pytest.approx(floor)
    assert at(55) == pytest.approx(floor + (lr - floor) / 2, rel=1e-9)  # half-way through the cosine
    assert at(2, epoch=1) != at(2)  # the warm-up belongs to the first epoch only, as the official code has it


def test_the_curriculum_moves_from_text_to_items():
    early = np.mean([schedule.text_only(0, m, 1000) for m in range(100)])
    late = np.mean([schedule.text_only(0, m, 1000) for m in range(900, 1000)])
    assert early > 0.85 and late < 0.15


def test_mixed_precision_trains_float32_master_weights(tiny_llama_dir, toy_data_dir, tmp_path):
    """bfloat16 base, the 7B recipe's training settings, two steps on CPU: the adapter is held and saved in
    float32, and an update far below bfloat16's resolution at these weights still lands."""
    from safetensors.torch import load_file

    from ilora_export.train.finetune import finetune
    from ilora_export.train.recipe import load_recipe

    seven_b = load_recipe(
        _repo_root() / "recipes" / "lastfm-llama2-7b.yaml", [f"base_model={tiny_llama_dir}", "train.device=cpu"]
    ).train
    assert (seven_b.schedule, seven_b.dtype) == ("official", "bfloat16")
    train = {k: v for k, v in vars(seven_b).items() if k not in ("max_steps", "batch_size", "grad_accum", "device")}
    train |= {"max_steps": 2, "batch_size": 2, "grad_accum": 1, "save_every": 1, "eval_rows": 2, "eval_every": 2}
    train |= {"lr": 1e-5}
    recipe = tiny_recipe(tiny_llama_dir, toy_data_dir, tmp_path / "run", **train)
    saved = {}
    finetune(
        recipe,
        progress=False,
        on_checkpoint=lambda step, ckpt: saved.update({step: load_file(ckpt / "adapter.safetensors")}),
    )
    assert sorted(saved) == [0, 1, 2]
    assert {t.dtype for t in saved[2].values()} == {torch.float32}
    moved = [k for k in saved[0] if not torch.equal(saved[0][k], saved[2][k])]
    assert len(moved) == len(saved[0])  # every tensor of the adapter moved by ~1e-5 (bfloat16 would round it away)
    state = load_file(tmp_path / "run" / "train_state" / "trainable.safetensors")
    assert {t.dtype for t in state.values()} == {torch.float32}
    assert (tmp_path / "run" / "ckpt-best" / "adapter.safetensors").is_file()  # validated in bfloat16
    config = json.loads((tmp_path / "run" / "ckpt" / "config.json").read_text())
    assert config["prompts"]["style"] == "official"  # stripped templates, no empty first answer, as the official


def _repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[2]
