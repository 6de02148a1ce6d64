"""``ilora-export onnx``."""

from __future__ import annotations

import click


@click.command(name="onnx")
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=str),
    help="Export folder to write (replaced atomically if it exists).",
)
@click.option(
    "--dtype",
    type=click.Choice(["fp32", "fp16"]),
    default="fp32",
    show_default=True,
    help="Decoder precision. fp16 keeps RMSNorm, attention softmax and the logits in fp32 "
    "(the graph TensorRT's strongly typed mode consumes).",
)
@click.option(
    "--bake-experts",
    is_flag=True,
    help="Embed the expert bank in the decoder as initializers instead of graph inputs "
    "(by default it is saved beside it as bank.safetensors and can be swapped).",
)
@click.option("--no-validate", is_flag=True, help="Skip the onnxruntime-vs-PyTorch check after export.")
def export_onnx(checkpoint, output, dtype, bake_experts, no_validate):
    """Export CHECKPOINT to ONNX: encoder (SASRec + gate + projector) and decoder (LLM + MoE-LoRA + KV cache).

    \b
    The folder holds encoder.onnx, decoder.onnx (+ external data), bank.safetensors, the token
    embeddings, the tokenizer, catalogue and prompts, and manifest.json (contracts, sizes, versions,
    sha256 of every file). Afterwards the graphs are run in onnxruntime against PyTorch on real
    prompts; a disagreement beyond the contract's tolerance fails the export.

    \b
    Example:
      ilora-export onnx runs/lastfm-smollm2/ckpt -o runs/lastfm-smollm2/onnx
      ilora-export eval runs/lastfm-smollm2/onnx --backend ort --data DIR
    """
    from ilora_export.export.package import export_checkpoint

    export_checkpoint(
        checkpoint, output, dtype=dtype, bake_experts=bake_experts, validate=not no_validate, log=click.echo
    )
