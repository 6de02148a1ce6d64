"""Fine-tuning iLoRA from a recipe.

Stage 1 provides SASRec (the official pretrained pickle, read through a restricted unpickler, or one
trained here). Stage 2 trains the adapter (expert bank, gate, projector) with the LM loss on the answer
tokens; the base LLM and SASRec stay frozen.

Data order is a pure function of (seed, sample index), so a resumed run sees exactly the batches an
uninterrupted one would; the trainer state (adapter, optimizer, RNG, step) is saved atomically every
``train.save_every`` steps into ``<output_dir>/train_state`` and the usable checkpoint into
``<output_dir>/ckpt``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ilora_export.errors import DataError, IloraError
from ilora_export.fileio import atomic_dir
from ilora_export.train.recipe import Recipe, recipe_to_dict

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STATE_DIR = "train_state"
CKPT_DIR = "ckpt"
STAGE1_DIR = "stage1"


@dataclass
class FinetuneResult:
    checkpoint: Path
    steps: int
    final_loss: float | None
    eval_summary: dict | None
    wall_seconds: float


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _stage1_sasrec(recipe: Recipe, dataset, out: Path, device: str, progress: bool):
    from ilora_export.model.sasrec import SASRec, load_official_sasrec
    from ilora_export.train.sasrec import SASRecTrainConfig, train_sasrec

    num_items = dataset.catalogue.num_items
    if recipe.sasrec.pretrained:
        sasrec = load_official_sasrec(recipe.sasrec.pretrained)
        if sasrec.item_num != num_items:
            raise DataError(f"{recipe.sasrec.pretrained}: SASRec scores {sasrec.item_num} items, the dataset "
                            f"{dataset.root} has {num_items}", "use the SASRec trained on this dataset")
        return sasrec
    stage1 = out / STAGE1_DIR
    if (stage1 / "sasrec.safetensors").is_file():  # resumed run: stage 1 is done
        cfg = json.loads((stage1 / "sasrec.json").read_text())
        sasrec = SASRec(**cfg)
        sasrec.load_state_dict(load_file(stage1 / "sasrec.safetensors"))
        return sasrec
    s = recipe.sasrec
    cfg = SASRecTrainConfig(hidden=s.hidden, num_heads=s.num_heads, dropout=s.dropout, epochs=s.epochs,
                            batch_size=s.batch_size, lr=s.lr, weight_decay=s.weight_decay)
    sasrec, metrics = train_sasrec(dataset.split("train"), num_items, cfg, seed=recipe.seed,
                                   valid_df=dataset.split("valid"), progress=progress, device=device)
    with atomic_dir(stage1) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in sasrec.state_dict().items()}, tmp / "sasrec.safetensors")
        (tmp / "sasrec.json").write_text(json.dumps(sasrec.config()))
        (tmp / "metrics.json").write_text(json.dumps(metrics, default=float, indent=2))
    return sasrec.cpu()


class TrainStream:
    """Sample ``g`` of training -> (row, candidates, template), a pure function of (seed, g)."""

    def __init__(self, frame, num_items: int, num_templates: int, seed: int, max_rows: int | None):
        rows = list(zip(frame["seq"], frame["len_seq"], frame["next"], frame["row_id"]))
        if max_rows is not None and max_rows < len(rows):
            keep = np.sort(np.random.default_rng([seed, 7]).choice(len(rows), max_rows, replace=False))
            rows = [rows[i] for i in keep]
        self.rows, self.num_items, self.num_templates, self.seed = rows, num_items, num_templates, seed
        self._perm_epoch, self._perm = -1, None

    def __len__(self) -> int:
        return len(self.rows)

    def sample(self, g: int):
        from ilora_export.data.evalset import sample_candidates

        epoch, pos = divmod(g, len(self.rows))
        if epoch != self._perm_epoch:
            self._perm_epoch, self._perm = epoch, np.random.default_rng([self.seed, 1, epoch]).permutation(len(self.rows))
        seq, len_seq, target, row_id = self.rows[self._perm[pos]]
        rng = np.random.default_rng([self.seed, 2, epoch, int(row_id)])
        cands = sample_candidates(list(seq[:len_seq]), int(target), self.num_items, rng)
        return list(seq), int(len_seq), list(cands), int(target), int(rng.integers(self.num_templates))


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def _save_state(out: Path, model, optimizer, scheduler, step: int, log: list[dict]) -> None:
    with atomic_dir(out / STATE_DIR) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.trainable_parameters().items()},
                  tmp / "trainable.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state()}, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "log": log}))


def _load_state(out: Path, model, optimizer, scheduler) -> tuple[int, list[dict]]:
    state_dir = out / STATE_DIR
    if not (state_dir / "state.json").is_file():
        return 0, []
    params = model.trainable_parameters()
    saved = load_file(state_dir / "trainable.safetensors")
    if set(saved) != set(params) or any(saved[k].shape != params[k].shape for k in params):
        raise IloraError(f"{state_dir}: saved trainer state does not match this recipe's model",
                         "use a new output_dir, or delete the train_state folder to start over")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(saved[k])
    # Our own file, written above; weights_only keeps even that load free of arbitrary code.
    blob = torch.load(state_dir / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["torch_rng"])
    state = json.loads((state_dir / "state.json").read_text())
    return state["step"], state["log"]


def finetune(recipe: Recipe, *, progress: bool = True, resume: bool = True) -> FinetuneResult:
    """Run both stages of a recipe; returns where the checkpoint is. The Python API of ``finetune``."""
    from ilora_export.base.fetch import resolve_base_model
    from ilora_export.base.loading import check_base_model_dir, load_base_model
    from ilora_export.checkpoint import save_checkpoint
    from ilora_export.data.llara import load_dataset
    from ilora_export.data.prompts import default_templates, load_prompt_file
    from ilora_export.model.ilora import ILoRAModel, add_ilora_tokens
    from ilora_export.model.prompting import PromptEncoder
    from ilora_export.model.spec import AdapterSpec

    t_start = time.perf_counter()
    tc = recipe.train
    device = tc.device
    if device == "cuda" and not torch.cuda.is_available():
        raise IloraError("train.device is cuda but PyTorch sees no CUDA device",
                         "override with train.device=cpu, or install a CUDA build of PyTorch")
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps(recipe_to_dict(recipe), indent=2))
    _seed_everything(recipe.seed)

    # Everything a user can get wrong is checked before any long work starts.
    dataset = load_dataset(recipe.data.root)
    templates = load_prompt_file(recipe.data.prompt_file) if recipe.data.prompt_file else default_templates()
    base_dir = resolve_base_model(recipe.base_model)
    check_base_model_dir(base_dir)
    sasrec = _stage1_sasrec(recipe, dataset, out, device, progress)

    llm, tokenizer = load_base_model(base_dir, dtype=DTYPES[tc.dtype])
    add_ilora_tokens(tokenizer, llm)
    spec = AdapterSpec(**dataclasses.asdict(recipe.adapter))
    torch.manual_seed(recipe.seed)
    try:
        model = ILoRAModel(llm, tokenizer, sasrec, spec)
    except ValueError as err:  # e.g. a target module the base model does not have
        raise IloraError(f"adapter: {err}", "check adapter.target_modules against the base model") from None
    model.to(device)

    encoder = PromptEncoder(tokenizer, dataset.catalogue.title, templates)
    stream = TrainStream(dataset.split("train"), dataset.catalogue.num_items, len(templates.templates),
                         recipe.seed, recipe.data.max_train_rows)
    params = list(model.trainable_parameters().values())
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(tc.warmup_steps, tc.max_steps))
    step, log = _load_state(out, model, optimizer, scheduler) if resume else (0, [])

    per_step = tc.batch_size * tc.grad_accum
    bar = tqdm(total=tc.max_steps, initial=step, desc="finetune", unit="step", disable=not progress)
    model.train()
    model.sasrec.eval()
    recent: list[float] = []
    while step < tc.max_steps:
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for micro in range(tc.grad_accum):
            g0 = step * per_step + micro * tc.batch_size
            examples = []
            for g in range(g0, g0 + tc.batch_size):
                seq, len_seq, cands, target, tmpl = stream.sample(g)
                examples.append(encoder.encode(seq, len_seq, cands, template_index=tmpl, answer=target))
            batch = encoder.collate(examples, padding_side="right").to(device)
            loss = model(batch.input_ids, batch.attention_mask, batch.seq, batch.len_seq, batch.candidates,
                         labels=batch.labels).loss / tc.grad_accum
            loss.backward()
            step_loss += loss.item()
        if not math.isfinite(step_loss):
            raise IloraError(f"loss became {step_loss} at step {step + 1}",
                             "lower train.lr, or use train.dtype=float32")
        torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
        optimizer.step()
        scheduler.step()
        step += 1
        recent = (recent + [step_loss])[-tc.log_every:]
        bar.update(1)
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if step % tc.log_every == 0 or step == tc.max_steps:
            log.append({"step": step, "loss": sum(recent) / len(recent), "lr": scheduler.get_last_lr()[0],
                        "epoch": step * per_step / len(stream)})
        if step % tc.save_every == 0 or step == tc.max_steps:
            model.eval()
            save_checkpoint(model, out / CKPT_DIR, base_model_ref=recipe.base_model, base_model_dir=base_dir,
                            catalogue=dataset.catalogue, templates=templates,
                            extra={"step": step, "recipe": recipe_to_dict(recipe)})
            _save_state(out, model, optimizer, scheduler, step, log)
            model.train()
            model.sasrec.eval()
    bar.close()
    (out / "train_log.json").write_text(json.dumps(log, indent=2))

    eval_summary = None
    if tc.eval_rows != 0:
        eval_summary = _final_eval(recipe, out, model, dataset, templates, base_dir, device, progress)
    return FinetuneResult(out / CKPT_DIR, step, log[-1]["loss"] if log else None, eval_summary,
                          time.perf_counter() - t_start)


def _final_eval(recipe: Recipe, out: Path, model, dataset, templates, base_dir: Path, device: str,
                progress: bool) -> dict:
    """Evaluate the model in memory (no second copy of the LLM) on the first ``eval_rows`` rows."""
    from ilora_export.checkpoint import LoadedCheckpoint, read_checkpoint
    from ilora_export.data.evalset import build_eval_set
    from ilora_export.eval.reference import evaluate_model, write_eval_output

    evalset = build_eval_set(dataset, recipe.data.eval_split, seed=0)
    if recipe.train.eval_rows is not None:
        evalset.rows = evalset.rows[:recipe.train.eval_rows]
    loaded = LoadedCheckpoint(model, dataset.catalogue, templates, read_checkpoint(out / CKPT_DIR), base_dir)
    result = evaluate_model(loaded, evalset, batch_size=recipe.train.batch_size, device=device, progress=progress)
    write_eval_output(result, out / f"eval-{recipe.data.eval_split}")
    return result.summary
