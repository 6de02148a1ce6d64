"""Importing a checkpoint trained with the official iLoRA code (PyTorch Lightning) into our format.

The Lightning ``.ckpt`` is a pickle, read by :func:`safe_load` with the plain-data allowlist (tensors,
OrderedDict, argparse Namespace, ...). Its ``state_dict`` keeps only trainable parameters:

- ``llama_model.base_model.model.model.layers.{i}.{self_attn|mlp}.{proj}.lora_{A|B}.default.weight``:
  the expert bank (``lora_A`` [r, in], ``lora_B`` [out, r]; expert k owns rank slice k*r/K:(k+1)*r/K);
- ``...{proj}.gating.default.linear_layer.weight`` [K, d_rec]: per-module gates the shipped scripts do
  not use (read only to know K);
- ``projector.mlp_proj.{0,2}.{weight,bias}``: the item projector;
- ``router.*``: the ResNet "share" router, whose BatchNorm running statistics are not saved (the
  official test run therefore uses mean 0 / variance 1, as a fresh BatchNorm does).

Token ids follow the official order ([PAD], then [PH], [HistoryEmb], [CansEmb], [ItemEmb]), and the
scaling is alpha / (r / K).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from ilora_export.errors import CheckpointError
from ilora_export.official.safe_pickle import DEFAULT_ALLOWED, safe_load

LORA_KEY = re.compile(
    r"^llama_model\.base_model\.model\.(?P<name>model\.layers\.(?P<layer>\d+)\."
    r"(?:self_attn|mlp)\.(?P<proj>\w+_proj))\.lora_(?P<ab>[AB])\.default\.weight$"
)
GATING_KEY = re.compile(r"\.(?P<proj>\w+_proj)\.gating\.default\.linear_layer\.weight$")
BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def read_official_state(path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, hyper_parameters) of a Lightning checkpoint (or a bare state dict), read safely."""
    obj = safe_load(path, DEFAULT_ALLOWED)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        state, hparams = obj["state_dict"], obj.get("hyper_parameters") or {}
    elif isinstance(obj, Mapping):
        state, hparams = obj, {}
    else:
        raise CheckpointError(
            f"{path}: holds {type(obj).__name__}, not a Lightning checkpoint or a state dict",
            "pass the .ckpt the official training wrote",
        )
    hparams = (
        dict(vars(hparams)) if hasattr(hparams, "__dict__") and not isinstance(hparams, Mapping) else dict(hparams)
    )
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state_dict entry {bad[0]!r} is not a tensor", "pass an official iLoRA .ckpt")
    return dict(state), hparams


def _official_layout(state: dict, path) -> dict:
    """Bank, K, r, projections, router and projector found in an official state dict (shapes checked)."""
    bank: dict[str, torch.Tensor] = {}
    projs, layers = set(), set()
    for key, t in state.items():
        m = LORA_KEY.match(key)
        if m:
            bank[f"{m['name']}.lora_{m['ab']}.default.weight"] = t
            projs.add(m["proj"])
            layers.add(int(m["layer"]))
    if not bank:
        raise CheckpointError(
            f"{path}: no LoRA weights under llama_model.base_model.model.model.layers.*",
            "pass a checkpoint written by the official iLoRA training",
        )
    ranks = {t.shape[0] for k, t in bank.items() if ".lora_A." in k} | {
        t.shape[1] for k, t in bank.items() if ".lora_B." in k
    }
    if len(ranks) != 1:
        raise CheckpointError(
            f"{path}: LoRA weights disagree on the rank ({sorted(ranks)})", "the checkpoint is inconsistent"
        )
    gating_k = {t.shape[0] for k, t in state.items() if GATING_KEY.search(k)}
    router = {k.removeprefix("router."): t for k, t in state.items() if k.startswith("router.")}
    projector = {k.removeprefix("projector."): t for k, t in state.items() if k.startswith("projector.")}
    if set(projector) != {"mlp_proj.0.weight", "mlp_proj.0.bias", "mlp_proj.2.weight", "mlp_proj.2.bias"}:
        raise CheckpointError(
            f"{path}: projector.mlp_proj.{{0,2}}.{{weight,bias}} missing or incomplete",
            "pass a checkpoint written by the official iLoRA training",
        )
    return {
        "bank": bank,
        "r": ranks.pop(),
        "projections": sorted(projs),
        "layers": sorted(layers),
        "gating_k": gating_k,
        "router": router,
        "projector": projector,
    }


def _num_experts(layout: dict, requested: int | None, path) -> int:
    router_k = layout["router"]["gate.fc.weight"].shape[0] if "gate.fc.weight" in layout["router"] else None
    found = {k for k in (router_k, *layout["gating_k"]) if k is not None}
    if len(found) > 1:
        raise CheckpointError(
            f"{path}: router and gating layers disagree on the number of experts ({sorted(found)})",
            "the checkpoint is inconsistent",
        )
    if not found:
        if requested != 1:
            raise CheckpointError(
                f"{path}: a plain LoRA checkpoint (no router, no gating layers)",
                "import it as a single expert with --num-experts 1",
            )
        return 1
    k = found.pop()
    if requested is not None and requested != k:
        raise CheckpointError(
            f"{path}: the checkpoint has {k} experts, --num-experts says {requested}", f"drop --num-experts or pass {k}"
        )
    if layout["r"] % k:
        raise CheckpointError(
            f"{path}: rank {layout['r']} does not split into {k} experts", "the checkpoint is inconsistent"
        )
    return k


def recalibrate_router(model, dataset, *, batch_size: int = 256, progress: bool = True) -> int:
    """Estimate the router's BatchNorm statistics from training sequences (cumulative average).

    Returns the number of sequences used. The router is left in eval mode.
    """
    from tqdm.auto import tqdm

    frame = dataset.split("train")
    seq = torch.tensor(frame["seq"].tolist(), dtype=torch.long)  # [N, L]
    len_seq = torch.tensor(frame["len_seq"].tolist(), dtype=torch.long)  # [N]
    bns = [m for m in model.gate_net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over all batches
    model.gate_net.train()
    with torch.no_grad():
        for start in tqdm(range(0, len(seq), batch_size), desc="router statistics", unit="batch", disable=not progress):
            user = model.sasrec.user_representation(
                seq[start : start + batch_size], len_seq[start : start + batch_size]
            )
            model.gate_net(user.to(model.projector_dtype))
    for bn in bns:
        bn.momentum = 0.1
    model.gate_net.eval()
    return len(seq)


def import_official(
    ckpt,
    rec_model,
    base_model,
    output,
    *,
    data_dir,
    prompt_file=None,
    num_experts: int | None = None,
    lora_alpha: float | None = None,
    recalibrate_router_data=None,
    log: Callable[[str], None] = print,
) -> Path:
    """Convert an official iLoRA checkpoint (+ its SASRec and base LLM) into a checkpoint directory.

    ``data_dir`` supplies the catalogue (item titles); ``prompt_file`` the templates the model was
    trained with (the official ``prompt/*.txt``; the project's default otherwise). The checkpoint's
    prompts are in the "official" style: each template line stripped, as the official loader reads it,
    and EOS banned at the first generated step, as the official generation does (min_new_tokens=1).
    """
    from ilora_export.artifacts.checkpoint import OFFICIAL_PROMPTS
    from ilora_export.artifacts.spec import AdapterSpec
    from ilora_export.base.fetch import resolve_base_model
    from ilora_export.base.loading import load_base_model
    from ilora_export.checkpoint.format import save_checkpoint
    from ilora_export.data.llara import load_dataset
    from ilora_export.data.prompts import default_templates, load_prompt_file
    from ilora_export.fileio import sha256_file
    from ilora_export.model.gating import ResNetGate
    from ilora_export.model.ilora import ILoRAModel, add_ilora_tokens
    from ilora_export.model.projector import ItemProjector
    from ilora_export.official.sasrec import load_official_sasrec

    state, hparams = read_official_state(ckpt)
    layout = _official_layout(state, ckpt)
    k = _num_experts(layout, num_experts, ckpt)
    r = layout["r"]
    if "lora_r" in hparams and int(hparams["lora_r"]) != r:
        raise CheckpointError(
            f"{ckpt}: hyper_parameters say lora_r={hparams['lora_r']}, the weights have rank {r}",
            "the checkpoint is inconsistent",
        )
    alpha = float(lora_alpha if lora_alpha is not None else hparams.get("lora_alpha", 32))
    dataset = load_dataset(data_dir)  # checked before the long work
    templates = load_prompt_file(prompt_file, OFFICIAL_PROMPTS) if prompt_file else default_templates(OFFICIAL_PROMPTS)
    if prompt_file is None:
        log(
            "Warning: no --prompt-file; using the project's templates. The official scripts trained with "
            "prompt/<dataset>.txt: pass that file to prompt the model as it was trained."
        )
    sasrec = load_official_sasrec(rec_model)
    if sasrec.item_num != dataset.catalogue.num_items:
        raise CheckpointError(
            f"{rec_model}: SASRec knows {sasrec.item_num} items, {data_dir} has {dataset.catalogue.num_items}",
            "pass the dataset the model was trained on",
        )

    base_dir = resolve_base_model(base_model)
    llm, tokenizer = load_base_model(base_dir)
    cfg = llm.config
    a_in = (
        next(t.shape[1] for key, t in layout["bank"].items() if ".self_attn.q_proj.lora_A." in key)
        if "q_proj" in layout["projections"]
        else next(iter(layout["bank"].values())).shape[-1]
    )
    if "q_proj" in layout["projections"] and a_in != cfg.hidden_size:
        raise CheckpointError(
            f"{ckpt}: trained on a base model of width {a_in}, {base_dir} has {cfg.hidden_size}",
            "pass the base model the checkpoint was trained on (Llama-2-7B for the official scripts)",
        )
    if max(layout["layers"]) >= cfg.num_hidden_layers:
        raise CheckpointError(
            f"{ckpt}: LoRA weights for {max(layout['layers']) + 1} layers, {base_dir} has {cfg.num_hidden_layers}",
            "pass the base model the checkpoint was trained on",
        )
    add_ilora_tokens(tokenizer, llm)

    d_rec = sasrec.item_embeddings.weight.shape[1]
    w0 = layout["projector"]["mlp_proj.0.weight"]  # [hidden, d_rec]
    projector = ItemProjector(d_rec, cfg.hidden_size, w0.shape[0])
    _load(projector, layout["projector"], f"{ckpt} (projector.*)")
    if layout["router"]:
        gate = ResNetGate(d_rec, k)
        router = layout["router"]
        trainable = {n: t for n, t in gate.state_dict().items() if not n.endswith(BN_STATS)}
        if set(router) - set(gate.state_dict()) or set(trainable) - set(router):
            raise CheckpointError(
                f"{ckpt}: router.* does not match the official 'share' ResNet router",
                "only the shipped 'share' router is supported",
            )
        _load(gate, router, f"{ckpt} (router.*)", strict=False)
        gate_kind = "resnet"
    else:
        gate, gate_kind = None, "dense"
    spec = AdapterSpec(
        r=r,
        alpha=alpha,
        dropout=float(hparams.get("lora_dropout", 0.1)),
        num_experts=k,
        target_modules=layout["projections"],
        gate=gate_kind,
        projector_hidden=int(w0.shape[0]),
    )
    model = ILoRAModel(llm, tokenizer, sasrec, spec, gate_net=gate, projector=projector)
    if gate is None:  # one expert: the mixture is the constant 1
        torch.nn.init.zeros_(model.gate_net.fc.weight), torch.nn.init.zeros_(model.gate_net.fc.bias)
    params = dict(model.llm.named_parameters())
    with torch.no_grad():
        for name, t in layout["bank"].items():
            if name not in params:
                raise CheckpointError(f"{ckpt}: {name} has no place in {base_dir}", "pass the matching base model")
            if params[name].shape != t.shape:
                raise CheckpointError(
                    f"{ckpt}: {name} has shape {tuple(t.shape)}, the base model needs {tuple(params[name].shape)}",
                    "pass the base model the checkpoint was trained on",
                )
            params[name].copy_(t)

    stats = "mean 0 / variance 1 (not saved by the official code; as its test run)"
    if gate_kind == "resnet" and recalibrate_router_data is None:
        log(
            "Warning: the router's BatchNorm statistics are not in the checkpoint; using mean 0 / variance 1 as "
            "the official test run does. --recalibrate-router DATA estimates them from training sequences."
        )
    elif gate_kind == "resnet":
        n = recalibrate_router(model, load_dataset(recalibrate_router_data))
        stats = f"recalibrated on {n} training sequences of {recalibrate_router_data}"
        log(f"router BatchNorm statistics estimated from {n} training sequences")
    extra = {
        "imported_from": {
            "checkpoint": str(ckpt),
            "checkpoint_sha256": sha256_file(ckpt),
            "rec_model": str(rec_model),
            "rec_model_sha256": sha256_file(rec_model),
            "router_batchnorm": stats if gate_kind == "resnet" else None,
        }
    }
    out = save_checkpoint(
        model.eval(),
        output,
        base_model_ref=str(base_model),
        base_model_dir=base_dir,
        catalogue=dataset.catalogue,
        templates=templates,
        extra=extra,
    )
    log(
        f"imported {ckpt}: {len(layout['layers'])} layers x {len(layout['projections'])} projections, r {r}, "
        f"K {k}, scaling {spec.scaling:g}, gate {gate_kind} -> {out}"
    )
    return out


def _load(module: torch.nn.Module, sd: dict, where: str, strict: bool = True) -> None:
    own = module.state_dict()
    for name, t in sd.items():
        if name not in own or own[name].shape != t.shape:
            raise CheckpointError(
                f"{where}: {name} {tuple(t.shape)} does not fit "
                f"{tuple(own[name].shape) if name in own else 'this module'}",
                "the checkpoint does not match the base model or SASRec given",
            )
    module.load_state_dict(sd, strict=strict)
