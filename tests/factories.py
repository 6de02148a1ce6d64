"""Builders shared by tests: a tiny iLoRA model over the tiny random Llama (real SmolLM2 tokenizer)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from ilora_export.artifacts.spec import AdapterSpec
from ilora_export.base.loading import load_base_model
from ilora_export.model.ilora import ILoRAModel, add_ilora_tokens
from ilora_export.model.moe_lora import moe_lora_layers
from ilora_export.model.sasrec import SASRec

#: the official reference files (data, SASRec, prompts) live outside the repository
REF_DIR = Path(os.environ.get("ILORA_REF_DIR", Path(__file__).resolve().parents[2] / "shared" / "ilora-ref"))


def ref_path(*parts: str) -> Path:
    """A reference file, or skip the test saying where it was looked for."""
    path = REF_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference file {path} not present (set ILORA_REF_DIR to the ilora-ref folder)")
    return path


def cli_exit_code(args) -> int:
    """Run ``ilora-export ARGS`` in-process (as the console script does); its exit status."""
    from ilora_export.cli import main

    try:
        main(args)
    except SystemExit as exc:
        return exc.code or 0
    return 0


def make_tiny_ilora(
    llama_dir, *, num_items: int = 50, num_experts: int = 4, gate: str = "dense", seed: int = 0, lora_std: float = 0.05
) -> ILoRAModel:
    """A tiny iLoRA model whose expert bank is random (non-zero B), so the adapter matters."""
    llm, tokenizer = load_base_model(llama_dir)
    add_ilora_tokens(tokenizer, llm)
    torch.manual_seed(seed)
    sasrec = SASRec(num_items, hidden=16, state_size=10)
    spec = AdapterSpec(r=8, alpha=16.0, dropout=0.0, num_experts=num_experts, gate=gate)
    model = ILoRAModel(llm, tokenizer, sasrec, spec)
    for layer in moe_lora_layers(model.llm).values():
        nn.init.normal_(layer.lora_B["default"].weight, std=lora_std)
    return model.eval()


@torch.no_grad()
def trained_like_layernorms(sasrec, seed: int = 1) -> None:
    """Give SASRec's LayerNorms trained-like parameters (weights 0.5..1.5, small biases).

    The official query mask tests ``ln_1(x).sum(-1) != 0``; with a fresh LayerNorm (weight 1, bias 0)
    that sum is 0 up to rounding, so the mask would be rounding noise, which no trained model has.
    """
    gen = torch.Generator().manual_seed(seed)
    for ln in (sasrec.ln_1, sasrec.ln_2, sasrec.ln_3):
        ln.weight.copy_(torch.rand(ln.weight.shape, generator=gen) + 0.5)
        ln.bias.copy_(torch.randn(ln.bias.shape, generator=gen) * 0.1)


def make_tiny_checkpoint(llama_dir, data_dir, out, **kwargs):
    """A checkpoint directory of :func:`make_tiny_ilora` (trained-like SASRec LayerNorms) over a
    synthetic dataset's catalogue."""
    from ilora_export.checkpoint.format import save_checkpoint
    from ilora_export.data.llara import load_dataset
    from ilora_export.data.prompts import default_templates

    model = make_tiny_ilora(llama_dir, **kwargs)
    trained_like_layernorms(model.sasrec)
    catalogue = load_dataset(data_dir).catalogue
    return save_checkpoint(
        model,
        out,
        base_model_ref=str(llama_dir),
        base_model_dir=Path(llama_dir),
        catalogue=catalogue,
        templates=default_templates(),
    )


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it (as when the machine running them dies).

    Walks /proc, so it also reaches processes that left the process group (a local Ray instance's
    raylet and its workers)."""
    import os
    import signal
    from collections import defaultdict

    for _ in range(2):  # a second pass for anything spawned during the first
        children = defaultdict(list)
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(stat.parent.name))
        tree, todo = [pid], [pid]
        while todo:
            for child in children[todo.pop()]:
                tree.append(child)
                todo.append(child)
        for p in tree:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def kill_eval_at_first_shard(args: list[str], out: Path, timeout: float = 240) -> int:
    """Run ``ilora-export eval ARGS -o OUT`` in a subprocess and SIGKILL it (with everything below it)
    as soon as its first shard file appears; returns how many shards were finished by then."""
    import subprocess
    import sys
    import time

    shards = out / "shards"
    cmd = [sys.executable, "-c", "from ilora_export.cli import main; main()", "eval", *args, "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not list(shards.glob("shard-*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        kill_tree(proc.pid)
        proc.wait()
    return len(list(shards.glob("shard-*.parquet")))
