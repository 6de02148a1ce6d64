"""``ilora-export quantize``."""

from __future__ import annotations

import click

from ilora_export.cli.options import (
    batch_size_option,
    limit_option,
    seed_option,
    threads_option,
)


@click.command()
@click.argument("export_dir", type=click.Path(path_type=str))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=str),
    help="Quantized export folder to write (replaced atomically if it exists).",
)
@click.option(
    "--bits",
    type=click.Choice(["8", "4"]),
    default="8",
    show_default=True,
    help="Weight bits of the base LLM's projections and LM head.",
)
@click.option(
    "--block-size",
    type=int,
    default=32,
    show_default=True,
    help="Weights per quantization block (a power of two >= 16).",
)
@click.option(
    "--accuracy-level",
    type=click.IntRange(0, 4),
    default=4,
    show_default=True,
    help="MatMulNBits compute type: 4 multiplies with int8 activations (the fast CPU kernels); "
    "0 computes in fp32 (closer to the fp32 export, but int8 weights then decode several "
    "times slower than fp32).",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Dataset folder for the quality gate: both exports answer its evaluation set.",
)
@click.option("--split", type=click.Choice(["train", "valid", "test"]), default="test", show_default=True)
@seed_option
@limit_option
@batch_size_option
@threads_option
@click.option(
    "--min-agreement",
    type=click.FloatRange(0, 1),
    default=0.95,
    show_default=True,
    help="Warn when fewer answers than this fraction are identical to the fp32 export's.",
)
def quantize(
    export_dir,
    output,
    bits,
    block_size,
    accuracy_level,
    data_dir,
    split,
    seed,
    limit,
    batch_size,
    threads,
    min_agreement,
):
    """Quantize the base LLM of EXPORT_DIR (an fp32 export) to int8 or int4 weights, for onnxruntime on CPU.

    \b
    The expert bank, encoder, embeddings, norms and attention stay fp32. With --data, a quality gate
    evaluates the fp32 and the quantized export on the same rows and reports answer agreement and
    the HitRatio@1 delta (kept in the new manifest); below --min-agreement it warns. Quantized
    exports are for onnxruntime; TensorRT engines are built from the fp16 export instead.

    \b
    Example:
      ilora-export quantize runs/lastfm-smollm2/onnx -o runs/lastfm-smollm2/onnx-int8 --data DIR
      ilora-export eval runs/lastfm-smollm2/onnx-int8 --backend ort --data DIR
    """
    from ilora_export.eval.quantize import quantize_export

    quantize_export(
        export_dir,
        output,
        bits=int(bits),
        block_size=block_size,
        accuracy_level=accuracy_level,
        data_dir=data_dir,
        split=split,
        seed=seed,
        limit=limit,
        min_agreement=min_agreement,
        batch_size=batch_size,
        threads=threads,
        log=click.echo,
    )
