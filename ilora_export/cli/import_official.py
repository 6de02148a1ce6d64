"""``ilora-export import-official``."""

from __future__ import annotations

import click

from ilora_export.cli.options import prompt_file_option


@click.command(name="import-official")
@click.option(
    "--ckpt",
    "ckpt",
    required=True,
    type=click.Path(dir_okay=False, path_type=str),
    help="The official PyTorch Lightning checkpoint (.ckpt); read with a restricted unpickler.",
)
@click.option(
    "--rec-model",
    required=True,
    type=click.Path(dir_okay=False, path_type=str),
    help="The official SASRec file it was trained with (rec_model/<dataset>.pt).",
)
@click.option(
    "--base-model",
    required=True,
    help="The base LLM folder it was trained on (a local Hugging Face folder, e.g. Llama-2-7B).",
)
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=str),
    help="The dataset folder (LLaRA layout): the item titles of the catalogue.",
)
@prompt_file_option
@click.option(
    "--num-experts",
    type=click.IntRange(min=1),
    default=None,
    help="Expected K (read from the router); 1 imports a plain LoRA checkpoint.",
)
@click.option(
    "--lora-alpha",
    type=float,
    default=None,
    help="LoRA alpha when the checkpoint's hyper_parameters lack it (official scripts: 32).",
)
@click.option(
    "--recalibrate-router",
    "recalibrate",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Estimate the router's BatchNorm statistics from this dataset's training sequences "
    "(default: mean 0 / variance 1, as the official test run).",
)
@click.option(
    "-o", "--output", required=True, type=click.Path(file_okay=False, path_type=str), help="Checkpoint folder to write."
)
def import_official(ckpt, rec_model, base_model, data_dir, prompt_file, num_experts, lora_alpha, recalibrate, output):
    """Convert a checkpoint of the official iLoRA code into this project's checkpoint format.

    \b
    Example (LastFM, Llama-2-7B):
      ilora-export import-official --ckpt lastfm.ckpt --rec-model rec_model/lastfm.pt \\
          --base-model ~/models/Llama-2-7b-hf --data data/lastfm --prompt-file prompt/artist.txt -o ckpt/
      ilora-export onnx ckpt/ -o onnx/
    """
    from ilora_export.official.importer import import_official as run

    run(
        ckpt,
        rec_model,
        base_model,
        output,
        data_dir=data_dir,
        prompt_file=prompt_file,
        num_experts=num_experts,
        lora_alpha=lora_alpha,
        recalibrate_router_data=recalibrate,
        log=click.echo,
    )
