"""``export_checkpoint``: a checkpoint directory -> a verified export directory (the ``onnx`` command)."""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ilora_export.artifacts.checkpoint import prompts_style
from ilora_export.artifacts.contract import DECODER_FILE, ENCODER_FILE, encoder_contract
from ilora_export.artifacts.kinds import EXPORT, of_kind
from ilora_export.artifacts.manifest import (
    BANK,
    CATALOGUE,
    EMBEDDINGS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    PROMPTS,
    TOKENIZER,
    bank_metadata,
    write_manifest,
)
from ilora_export.errors import ExportError, IloraError
from ilora_export.fileio import atomic_dir, check_replaceable, hash_tree, sha256_file
from ilora_export.lazy import require

DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16"}


def _require_onnx():
    require("onnx", "onnxscript", purpose="exporting")


def check_graph(file: Path) -> None:
    """onnx.checker (full, with strict shape inference) on a graph file; ExportError on failure."""
    import onnx

    try:
        onnx.checker.check_model(str(file), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ExportError(
            f"{file}: the exported graph does not pass onnx.checker ({str(err)[:300]})",
            "please report this with the checkpoint's config.json",
        ) from None


def _opset(file: Path) -> int:
    import onnx

    model = onnx.load(str(file), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _versions() -> dict:
    import onnx
    import transformers

    import ilora_export

    versions = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "ilora_export": ilora_export.__version__,
    }
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return versions


def export_checkpoint(
    checkpoint,
    output,
    *,
    dtype: str = "fp32",
    bake_experts: bool = False,
    base_model: str | None = None,
    validate: bool = True,
    plain: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Export ``checkpoint`` to ``output``: encoder + decoder graphs, bank, embeddings, manifest.

    The folder is written atomically: it appears complete (manifest last, with every file's sha256)
    or not at all. With ``validate`` the graphs are run in onnxruntime against PyTorch on real prompts
    first, and a disagreement beyond the contract's tolerance raises ValidationError. ``plain`` exports
    the base LLM without the adapter behind the same interface (a benchmark baseline, not a model to
    deploy).
    """
    bake_experts = bake_experts or plain
    from safetensors.numpy import save_file

    from ilora_export.checkpoint import load_checkpoint
    from ilora_export.export.decoder import export_decoder, model_shape
    from ilora_export.export.encoder import export_encoder
    from ilora_export.model.generate import eos_token_ids

    _require_onnx()
    say = log or (lambda _msg: None)
    if dtype not in DTYPE_NAMES:
        raise IloraError(f"unknown dtype {dtype!r}", "use fp32 or fp16")
    dtype_name = DTYPE_NAMES[dtype]
    check_replaceable(output, of_kind(EXPORT), "an export")  # before minutes of work, not after
    t0 = time.perf_counter()
    loaded = load_checkpoint(checkpoint)
    model = loaded.model.float().eval()
    shape = model_shape(model)
    say(
        f"loaded {checkpoint} ({shape.num_layers} layers, hidden {shape.hidden_size}, "
        f"K {model.spec.num_experts}, r {model.spec.r}) in {time.perf_counter() - t0:.0f} s"
    )
    ckpt_path = Path(loaded.info.path)
    with atomic_dir(output, replaceable=of_kind(EXPORT), what="an export") as tmp:
        t = time.perf_counter()
        export_encoder(model, tmp / ENCODER_FILE, shape)
        say(f"encoder graph written ({time.perf_counter() - t:.0f} s)")

        graph_model = model
        if dtype_name == "float16":
            graph_model = copy.deepcopy(model)
            graph_model.llm.half()
        t = time.perf_counter()
        say("exporting the decoder (the longest step: about 2 minutes for a 135M model on 2 cores)")
        contract = export_decoder(graph_model, tmp / DECODER_FILE, bake_experts=bake_experts, plain=plain)
        say(f"decoder graph written ({time.perf_counter() - t:.0f} s)")

        if not bake_experts:
            from ilora_export.export.decoder import graph_bank

            bank = {k: v.numpy() for k, v in graph_bank(graph_model).items()}
            save_file(bank, str(tmp / BANK), metadata=bank_metadata(shape, model.spec.r))
        emb = graph_model.llm.get_input_embeddings().weight.detach().contiguous().numpy()
        save_file({"input_embeddings": emb}, str(tmp / EMBEDDINGS))
        shutil.copytree(ckpt_path / TOKENIZER, tmp / TOKENIZER)
        for name in (CATALOGUE, PROMPTS):
            shutil.copy2(ckpt_path / name, tmp / name)
        del graph_model

        t = time.perf_counter()
        for name in (ENCODER_FILE, DECODER_FILE):
            check_graph(tmp / name)
        say(f"onnx.checker and shape inference passed ({time.perf_counter() - t:.0f} s)")

        cfg = loaded.info.config
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dtype": dtype_name,
            "bake_experts": bake_experts,
            "adapters": not plain,
            "graphs": {"encoder": encoder_contract(shape).to_dict(), "decoder": contract.to_dict()},
            "model": shape.to_dict() | {"item_num": model.sasrec.item_num, "state_size": model.sasrec.state_size},
            "adapter": {k: cfg["adapter"][k] for k in ("r", "alpha", "num_experts", "target_modules", "gate")}
            | {"scaling": model.spec.scaling},
            "catalogue_sha256": loaded.catalogue.fingerprint(),  # ids and titles, as eval compares them
            "tokens": dict(model.token_ids),
            "eos_token_ids": sorted(eos_token_ids(model.tokenizer, model.llm.generation_config)),
            "pad_token_id": model.tokenizer.pad_token_id,
            "prompts_source": cfg["prompts"]["source"],
            "prompts_style": prompts_style(cfg),  # how prompts are built and answered (artifacts.checkpoint)
            "opset": _opset(tmp / DECODER_FILE),
            "versions": _versions(),
            "source": {
                "checkpoint": str(ckpt_path.resolve()),
                "checkpoint_sha256": sha256_file(ckpt_path / "config.json"),
                "base_model": {
                    k: cfg["base_model"][k]
                    for k in ("ref", "fingerprint", "model_type", "hidden_size", "num_hidden_layers")
                },
            },
            "files": hash_tree(tmp, exclude=MANIFEST),
        }
        write_manifest(tmp / MANIFEST, manifest)
        if validate:
            t = time.perf_counter()
            report = validate_export(tmp, model)
            say(
                f"validated against PyTorch ({time.perf_counter() - t:.0f} s): prefill max |dlogits| "
                f"{report['prefill_logits_max_abs']:.2e}, decode {report['decode_logits_max_abs']:.2e}, "
                f"greedy tokens agree {report['greedy_token_agreement']:.0%}"
            )
            manifest["validation"] = report
            write_manifest(tmp / MANIFEST, manifest)
    say(f"export written to {output} in {time.perf_counter() - t0:.0f} s")
    return Path(output)


def validate_export(export_dir, model, *, threads: int | None = None) -> dict:
    """Compare the export's ORT graphs with ``model`` (fp32 PyTorch); ValidationError beyond tolerance."""
    from ilora_export.export.validate import compare_backends
    from ilora_export.runtime.load import load_export
    from ilora_export.runtime.ort_backend import OrtBackend
    from ilora_export.runtime.torch_backend import TorchBackend

    export = load_export(export_dir)
    info = export.info
    reference = TorchBackend(model, adapters=info.manifest.get("adapters", True))
    return compare_backends(
        reference,
        OrtBackend(export, threads=threads),
        export.assets,
        info.manifest["model"]["state_size"],
        tolerance=info.tolerance,
        strict_argmax=info.dtype == "float32",
    )
