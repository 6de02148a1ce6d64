"""Fine-tuning iLoRA from a recipe.

Stage 1 provides SASRec (the official pretrained pickle, read through a restricted unpickler, or one
trained here). Stage 2 trains the adapter (expert bank, gate, projector) with the LM loss on the answer
tokens; the base LLM and SASRec stay frozen.

A SASRec trained here is kept in ``<output_dir>/stage1`` with a record of what produced it (sha256 of
the train and valid split files and of the catalogue, the SASRec settings, the seed); a later run
reuses it only when that record is identical, and a run with ``resume=False`` trains it again.

Data order is a pure function of (seed, sample index), so a resumed run sees exactly the batches an
uninterrupted one would; the trainer state (adapter, optimizer, RNG, step, loss window, the stage-1
record it was trained with, sha256 of its files) is saved atomically every ``train.save_every`` steps
into ``<output_dir>/train_state`` and the usable checkpoint into ``<output_dir>/ckpt``. Training stops
on a non-finite loss or gradient norm.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ilora_export.artifacts.kinds import CHECKPOINT, TRAIN_STATE, describe_folder, of_kind
from ilora_export.errors import CheckpointError, DataError, IloraError
from ilora_export.fileio import atomic_dir, atomic_path, check_replaceable, find_hash_problem, sha256_file
from ilora_export.schema import build, opt
from ilora_export.train import schedule
from ilora_export.train.recipe import Recipe, recipe_to_dict

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STATE_DIR = "train_state"
CKPT_DIR = "ckpt"
BEST_DIR = "ckpt-best"  # with train.eval_every: the checkpoint of the best validation
STAGE1_DIR = "stage1"
STAGE1_RECORD = "key.json"  # what stage1/ was made from, and the sha256 of its files
STAGE1_WEIGHTS, STAGE1_CONFIG = "sasrec.safetensors", "sasrec.json"
TRAINABLE, OPTIMIZER, STATE = "trainable.safetensors", "optimizer.pt", "state.json"


@dataclass
class FinetuneResult:
    checkpoint: Path
    steps: int
    final_loss: float | None
    eval_summary: dict | None
    wall_seconds: float
    best_checkpoint: Path | None = None  # with train.eval_every: the best validated checkpoint


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``dotted.key: old -> new`` for every leaf that differs between two nested dicts."""

    def shown(v) -> str:
        return f"{v[:8]}..." if isinstance(v, str) and len(v) == 64 else repr(v)  # sha256 digests shortened

    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {shown(a)} -> {shown(b)}")
    return out


# --------------------------------------------------------------------------------------------------
# Stage 1


def stage1_key(recipe: Recipe, dataset) -> dict:
    """What stage 1's SASRec is a function of: the pretrained file, or the data, settings and seed it trains with."""
    s = recipe.sasrec
    if s.pretrained:
        return {"pretrained": sha256_file(s.pretrained) if Path(s.pretrained).is_file() else s.pretrained}
    for split in ("train", "valid"):
        dataset.split(split)  # readable and well-formed, before hashing
    files = {
        "train": dataset.split_path("train"),
        "valid": dataset.split_path("valid"),
        "catalogue": dataset.catalogue.source,
    }
    return {
        "dataset": {name: sha256_file(f) for name, f in files.items()},
        "sasrec": {k: v for k, v in dataclasses.asdict(s).items() if k != "pretrained"},
        "seed": recipe.seed,
    }


def _reusable_stage1(stage1: Path, key: dict):
    """(the SASRec in ``stage1``, "") when it was made from ``key`` and its files are intact, else (None, why not)."""
    from ilora_export.model.sasrec import SASRec

    record_file = stage1 / STAGE1_RECORD
    if not record_file.is_file():
        return None, f"{record_file} is missing" if (stage1 / STAGE1_WEIGHTS).exists() else f"{stage1} holds none yet"
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
        made_from, files = record["made_from"], record["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"{record_file} is unreadable"
    if not isinstance(made_from, dict) or not isinstance(files, dict):
        return None, f"{record_file} is unreadable"
    if made_from != key:
        return None, f"{stage1} was made from other inputs: {'; '.join(_differences(made_from, key))}"
    if problem := find_hash_problem(stage1, files):
        return None, f"{problem[0]} is {problem[1]}"
    sasrec = SASRec(**json.loads((stage1 / STAGE1_CONFIG).read_text(encoding="utf-8")))
    sasrec.load_state_dict(load_file(stage1 / STAGE1_WEIGHTS))
    return sasrec, ""


def _write_stage1(stage1: Path, sasrec, metrics: dict, key: dict) -> None:
    """Our files in ``stage1``, each atomically, the record last; anything else in the folder is left alone."""
    (stage1 / STAGE1_RECORD).unlink(missing_ok=True)  # not reusable until its record is rewritten
    writers = {
        STAGE1_WEIGHTS: lambda p: save_file({k: v.contiguous().cpu() for k, v in sasrec.state_dict().items()}, p),
        STAGE1_CONFIG: lambda p: p.write_text(json.dumps(sasrec.config()), encoding="utf-8"),
        "metrics.json": lambda p: p.write_text(json.dumps(metrics, default=float, indent=2), encoding="utf-8"),
    }
    for name, write in writers.items():
        with atomic_path(stage1 / name) as tmp:
            write(tmp)
    record = {"made_from": key, "files": {n: sha256_file(stage1 / n) for n in (STAGE1_WEIGHTS, STAGE1_CONFIG)}}
    with atomic_path(stage1 / STAGE1_RECORD) as tmp:
        tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")


def _stage1_sasrec(
    recipe: Recipe,
    dataset,
    key: dict,
    out: Path,
    *,
    device: str,
    progress: bool,
    resume: bool,
    say: Callable[[str], None],
):
    from ilora_export.checkpoint.format import non_finite
    from ilora_export.official.sasrec import load_official_sasrec
    from ilora_export.train.sasrec import train_sasrec

    num_items = dataset.catalogue.num_items
    if recipe.sasrec.pretrained:
        sasrec = load_official_sasrec(recipe.sasrec.pretrained)
        if sasrec.item_num != num_items:
            raise DataError(
                f"{recipe.sasrec.pretrained}: SASRec scores {sasrec.item_num} items, the dataset "
                f"{dataset.root} has {num_items}",
                "use the SASRec trained on this dataset",
            )
        return sasrec
    stage1 = out / STAGE1_DIR
    why = "starting over"
    if resume:
        sasrec, why = _reusable_stage1(stage1, key)
        if sasrec is not None:
            say(f"stage 1: reusing the SASRec in {stage1} (same data, SASRec settings and seed)")
            return sasrec
    say(f"stage 1: training SASRec ({why})")
    sasrec, metrics = train_sasrec(
        dataset.split("train"),
        num_items,
        recipe.sasrec,
        seed=recipe.seed,
        valid_df=dataset.split("valid"),
        progress=progress,
        device=device,
    )
    if bad := non_finite(sasrec.state_dict()):
        raise IloraError(f"stage 1: SASRec weight {bad[0]} became {bad[1]}", "lower sasrec.lr")
    _write_stage1(stage1, sasrec, metrics, key)
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
            perm = np.random.default_rng([self.seed, 1, epoch]).permutation(len(self.rows))
            self._perm_epoch, self._perm = epoch, perm
        seq, len_seq, target, row_id = self.rows[self._perm[pos]]
        rng = np.random.default_rng([self.seed, 2, epoch, int(row_id)])
        cands = sample_candidates(list(seq[:len_seq]), int(target), self.num_items, rng)
        return list(seq), int(len_seq), list(cands), int(target), int(rng.integers(self.num_templates))


# --------------------------------------------------------------------------------------------------
# Trainer state


@dataclass
class _StateRecord:
    """state.json of a trainer state (every key required)."""

    step: int = opt(ge=0)
    log: list[dict] = opt()
    recent: list[float] = opt()  # the losses of the rolling window the next log entry averages
    stage1: dict = opt()  # the stage-1 key the adapter was trained with
    files: dict[str, str] = opt(nonempty=True)


def _is_trainer_state(path: Path) -> bool:
    """A trainer state to replace: one intact, or one whose damaged files are still only ours."""
    return of_kind(TRAIN_STATE)(path) or all(
        p.name in (STATE, TRAINABLE, OPTIMIZER) and p.is_file() for p in path.iterdir()
    )


_is_trainer_state.describe = describe_folder  # a refusal names the files that are not ours


def _state_hint(state_dir: Path) -> str:
    return f"pass --no-resume to start over (or delete {state_dir})"


def _save_state(
    state_dir: Path, model, optimizer, scheduler, *, step: int, log: list[dict], recent: list[float], stage1: dict
) -> None:
    with atomic_dir(state_dir, replaceable=_is_trainer_state, what="a trainer state") as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.trainable_parameters().items()}, tmp / TRAINABLE)
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
            },
            tmp / OPTIMIZER,
        )
        files = {name: sha256_file(tmp / name) for name in (TRAINABLE, OPTIMIZER)}
        record = {"step": step, "log": log, "recent": recent, "stage1": stage1, "files": files}
        (tmp / STATE).write_text(json.dumps(record), encoding="utf-8")


def _read_state(state_dir: Path) -> dict | None:
    """The validated state.json of the trainer state in ``state_dir`` (its files intact), or None if there is none."""
    file, hint = state_dir / STATE, _state_hint(state_dir)
    if not file.is_file():
        return None
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IloraError(f"{file}: unreadable ({err})", hint) from None
    problems: list[str] = []
    build(_StateRecord, state, "", problems, defaults=False)
    if problems:
        raise IloraError(f"{file}: {'; '.join(problems)}", hint)
    if problem := find_hash_problem(state_dir, state["files"]):
        what = "missing" if problem[1] == "missing" else "sha256 does not match state.json (truncated or modified)"
        raise IloraError(f"{problem[0]}: {what}", hint)
    return state


def _restore_state(state_dir: Path, model, optimizer, scheduler) -> None:
    """Adapter weights, optimizer, scheduler and RNG from a trainer state :func:`_read_state` accepted."""
    hint = _state_hint(state_dir)
    params = model.trainable_parameters()
    try:
        saved = load_file(state_dir / TRAINABLE)
    except (SafetensorError, OSError) as err:
        raise IloraError(f"{state_dir / TRAINABLE}: unreadable ({err})", hint) from None
    if set(saved) != set(params) or any(saved[k].shape != params[k].shape for k in params):
        raise IloraError(
            f"{state_dir}: saved trainer state does not match this recipe's model", f"use a new output_dir, or {hint}"
        )
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(saved[k])
    try:
        # Our own file, written above; weights_only keeps even that load free of arbitrary code.
        blob = torch.load(state_dir / OPTIMIZER, weights_only=True)
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["torch_rng"])
    except Exception as err:  # whatever fails to read back our own file means it is damaged
        first_line = (str(err).splitlines() or [""])[0][:200]
        raise IloraError(f"{state_dir / OPTIMIZER}: unreadable ({type(err).__name__}: {first_line})", hint) from None


def _checkpoint_problem(ckpt: Path, step: int) -> str | None:
    """Why ``ckpt`` is not a valid checkpoint of trainer step ``step``; None when it is."""
    from ilora_export.checkpoint import read_checkpoint

    try:
        info = read_checkpoint(ckpt)
    except CheckpointError as err:
        return err.message
    saved = (info.config.get("extra") or {}).get("step")
    return None if saved == step else f"{ckpt} holds step {saved}"


# --------------------------------------------------------------------------------------------------
# Stage 2


def _stop_unless_finite(what: str, value: float, step: int) -> None:
    if not math.isfinite(value):
        raise IloraError(
            f"{what} became {value} at step {step}",
            "lower train.lr (or raise train.warmup_steps), or use train.dtype=float32; the checkpoint "
            "keeps the last step saved before",
        )


def clip_gradients(params: Iterable[torch.Tensor], max_norm: float, step: int) -> float:
    """Clip the gradients of ``params`` to ``max_norm``; their norm before clipping. Raises IloraError (so
    no optimizer step follows) when the norm is not finite."""
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    _stop_unless_finite("gradient norm", norm, step)
    return norm


def _step_loss(model, builder, stream: TrainStream, step: int, tc, device: str, seed: int, precision) -> float:
    """Forward and backward of optimizer step ``step`` (0-based; ``grad_accum`` micro-batches); its mean loss.

    ``precision``: the context forward passes run in (autocast for mixed precision)."""
    per_step = tc.batch_size * tc.grad_accum
    official = tc.schedule == "official"
    total = 0.0
    for micro in range(tc.grad_accum):
        g0 = step * per_step + micro * tc.batch_size
        plain = official and schedule.text_only(seed, step * tc.grad_accum + micro, tc.max_steps * tc.grad_accum)
        examples = []
        for g in range(g0, g0 + tc.batch_size):
            seq, len_seq, cands, target, tmpl = stream.sample(g)
            examples.append(
                builder.encode(seq, len_seq, cands, template_index=tmpl, answer=target, text_only=plain, pair=official)
            )
        batch = builder.collate(examples, padding_side="right").to(device)
        with precision():
            out = model(
                batch.input_ids,
                batch.attention_mask,
                batch.seq,
                batch.len_seq,
                batch.candidates,
                labels=batch.labels,
                items=not plain,
            )
        loss = out.loss.float() / tc.grad_accum
        loss.backward()
        total += loss.item()
    return total


def train_step(
    model, builder, stream: TrainStream, optimizer, scheduler, step: int, tc, seed: int, device: str, precision=None
) -> float:
    """Optimizer step ``step`` (0-based): forward and backward of its micro-batches, the finiteness checks,
    clipping (``cosine`` only), the optimizer step and the scheduler step; returns the step's mean loss."""
    precision = precision or contextlib.nullcontext
    optimizer.zero_grad(set_to_none=True)
    loss = _step_loss(model, builder, stream, step, tc, device, seed, precision)
    _stop_unless_finite("loss", loss, step + 1)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    clip_gradients(params, tc.max_grad_norm if schedule.clips_gradients(tc) else math.inf, step + 1)
    optimizer.step()
    scheduler.step()
    return loss


def finetune(
    recipe: Recipe,
    *,
    progress: bool = True,
    resume: bool = True,
    log: Callable[[str], None] | None = None,
    on_checkpoint: Callable[[int, Path], None] | None = None,
) -> FinetuneResult:
    """Run both stages of a recipe; returns where the checkpoint is. The Python API of ``finetune``.

    ``resume=False`` starts over: stage 1 is trained again and the trainer state is not read. ``log``
    receives one line per decision (stage 1 reused or trained, checkpoint re-saved). ``on_checkpoint(step,
    path)`` is called after each checkpoint is written, and once at step 0 of a fresh run (the untrained
    adapter), e.g. to evaluate a learning curve.
    """
    from ilora_export.base.fetch import resolve_base_model
    from ilora_export.base.loading import check_base_model_dir, load_base_model
    from ilora_export.checkpoint import save_checkpoint
    from ilora_export.data.llara import load_dataset
    from ilora_export.data.prompts import OFFICIAL_PROMPTS, PROJECT_PROMPTS, default_templates, load_prompt_file
    from ilora_export.model.ilora import ILoRAModel, add_ilora_tokens
    from ilora_export.model.prompting import PromptBuilder

    t_start = time.perf_counter()
    say = log or (lambda _msg: None)
    tc = recipe.train
    device = tc.device
    if device == "cuda" and not torch.cuda.is_available():
        raise IloraError(
            "train.device is cuda but PyTorch sees no CUDA device",
            "override with train.device=cpu, or install a CUDA build of PyTorch",
        )
    out = Path(recipe.output_dir)
    state_dir = out / STATE_DIR

    # Everything a user can get wrong is checked before any long work starts.
    dataset = load_dataset(recipe.data.root)
    # the official training strips each template line, and its generation never ends at the first token
    style = OFFICIAL_PROMPTS if tc.schedule == "official" else PROJECT_PROMPTS
    templates = (
        load_prompt_file(recipe.data.prompt_file, style) if recipe.data.prompt_file else default_templates(style)
    )
    base_dir = resolve_base_model(recipe.base_model)
    check_base_model_dir(base_dir)
    key = stage1_key(recipe, dataset)
    state = _read_state(state_dir) if resume else None
    if state is not None and state["stage1"] != key:
        raise IloraError(
            f"{state_dir}: trained with another stage 1 ({'; '.join(_differences(state['stage1'], key))}); not resumed",
            f"{_state_hint(state_dir)}, or use another output_dir",
        )
    # Neither folder is replaced later unless it holds only what fine-tuning wrote there: refuse now, not after hours.
    check_replaceable(out / CKPT_DIR, of_kind(CHECKPOINT), "a checkpoint")
    if tc.eval_every:
        check_replaceable(out / BEST_DIR, of_kind(CHECKPOINT), "a checkpoint")
    check_replaceable(state_dir, _is_trainer_state, "a trainer state")
    with atomic_path(out / "recipe.json") as tmp:
        tmp.write_text(json.dumps(recipe_to_dict(recipe), indent=2), encoding="utf-8")

    _seed_everything(recipe.seed)
    sasrec = _stage1_sasrec(recipe, dataset, key, out, device=device, progress=progress, resume=resume, say=say)
    llm, tokenizer = load_base_model(base_dir, dtype=DTYPES[tc.dtype])
    add_ilora_tokens(tokenizer, llm)
    torch.manual_seed(recipe.seed)
    try:
        model = ILoRAModel(llm, tokenizer, sasrec, recipe.adapter)
    except ValueError as err:  # e.g. a target module the base model does not have
        raise IloraError(f"adapter: {err}", "check adapter.target_modules against the base model") from None
    model.to(device)

    builder = PromptBuilder(tokenizer, dataset.catalogue.title, templates)
    stream = TrainStream(
        dataset.split("train"),
        dataset.catalogue.num_items,
        len(templates.templates),
        recipe.seed,
        recipe.data.max_train_rows,
    )
    params = list(model.trainable_parameters().values())
    mixed = tc.dtype != "float32"
    if mixed:  # master weights: the optimiser updates float32 copies; forward passes autocast to tc.dtype
        for p in params:
            p.data = p.data.float()

    def precision():
        if not mixed:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device, dtype=DTYPES[tc.dtype])

    optimizer, scheduler = schedule.build_optimizer(model, tc, examples_per_epoch=len(stream))
    step, history, recent = 0, [], []
    if state is not None:
        _restore_state(state_dir, model, optimizer, scheduler)
        step, history, recent = state["step"], state["log"], state["recent"]

    def save_ckpt() -> None:
        model.eval()
        save_checkpoint(
            model,
            out / CKPT_DIR,
            base_model_ref=recipe.base_model,
            base_model_dir=base_dir,
            catalogue=dataset.catalogue,
            templates=templates,
            extra={"step": step, "recipe": recipe_to_dict(recipe)},
        )

    def validate() -> None:
        """Validate the checkpoint just saved; keep it as ckpt-best when it is the best so far."""
        with precision():
            summary = _evaluate_in_memory(recipe, out, model, dataset, templates, base_dir, device, progress)
        metric = summary["hit_ratio@1_of_total"]
        best = max((h["validation"]["metric"] for h in history if "validation" in h), default=None)
        history.append({"step": step, "validation": {"metric": metric, "valid_ratio": summary["valid_ratio"]}})
        if best is None or metric > best:
            with atomic_dir(out / BEST_DIR, replaceable=of_kind(CHECKPOINT), what="a checkpoint") as tmp:
                for f in (out / CKPT_DIR).iterdir():
                    (shutil.copytree if f.is_dir() else shutil.copy2)(f, tmp / f.name)
            say(f"step {step}: validation metric {metric:.4f}, the best so far: {out / BEST_DIR}")

    start = step
    if on_checkpoint is not None and step == 0:
        save_ckpt()
        on_checkpoint(0, out / CKPT_DIR)
    bar = tqdm(total=tc.max_steps, initial=step, desc="finetune", unit="step", disable=not progress)
    model.train()
    model.sasrec.eval()
    while step < tc.max_steps:
        step_loss = train_step(model, builder, stream, optimizer, scheduler, step, tc, recipe.seed, device, precision)
        step += 1
        recent = (recent + [step_loss])[-tc.log_every :]
        bar.update(1)
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if step % tc.log_every == 0 or step == tc.max_steps:
            history.append(
                {
                    "step": step,
                    "loss": sum(recent) / len(recent),
                    "lr": scheduler.get_last_lr()[0],
                    "epoch": step * tc.batch_size * tc.grad_accum / len(stream),
                }
            )
        validating = bool(tc.eval_every) and (step % tc.eval_every == 0 or step == tc.max_steps)
        if step % tc.save_every == 0 or step == tc.max_steps or validating:
            save_ckpt()
            if validating:
                validate()
            _save_state(state_dir, model, optimizer, scheduler, step=step, log=history, recent=recent, stage1=key)
            if on_checkpoint is not None:
                on_checkpoint(step, out / CKPT_DIR)
            model.train()
            model.sasrec.eval()
    bar.close()
    if step == start and (problem := _checkpoint_problem(out / CKPT_DIR, step)):  # a finished run, run again
        say(f"re-saving {out / CKPT_DIR} from the trainer state of step {step} ({problem})")
        save_ckpt()
    with atomic_path(out / "train_log.json") as tmp:
        tmp.write_text(json.dumps(history, indent=2), encoding="utf-8")

    eval_summary = None
    if tc.eval_rows != 0:
        with precision():
            eval_summary = _evaluate_in_memory(
                recipe, out, model, dataset, templates, base_dir, device, progress, write=True
            )
    return FinetuneResult(
        out / CKPT_DIR,
        step,
        next((h["loss"] for h in reversed(history) if "loss" in h), None),
        eval_summary,
        time.perf_counter() - t_start,
        out / BEST_DIR if tc.eval_every and (out / BEST_DIR).is_dir() else None,
    )


def _evaluate_in_memory(
    recipe: Recipe,
    out: Path,
    model,
    dataset,
    templates,
    base_dir: Path,
    device: str,
    progress: bool,
    *,
    write: bool = False,
) -> dict:
    """Evaluate the model in memory (no second copy of the LLM) on the first ``eval_rows`` rows of
    ``data.eval_split``; ``write``: the results also go to ``OUTPUT_DIR/eval-SPLIT``."""
    from ilora_export.checkpoint import LoadedCheckpoint, read_checkpoint
    from ilora_export.data.evalset import build_eval_set
    from ilora_export.eval.answers import evaluate_model, write_eval_output

    evalset = build_eval_set(dataset, recipe.data.eval_split, seed=0)
    if recipe.train.eval_rows is not None:
        evalset.rows = evalset.rows[: recipe.train.eval_rows]
    loaded = LoadedCheckpoint(model, dataset.catalogue, templates, read_checkpoint(out / CKPT_DIR), base_dir)
    result = evaluate_model(loaded, evalset, batch_size=recipe.train.batch_size, device=device, progress=progress)
    if write:
        write_eval_output(result, out / f"eval-{recipe.data.eval_split}")
    return result.summary
