"""``ilora-export eval``."""

from __future__ import annotations

import click

from ilora_export.cli.options import (
    batch_size_option,
    data_options,
    device_option,
    eval_set_option,
    limit_option,
    output_option,
    prompt_file_option,
    seed_option,
    threads_option,
)


def format_summary(s: dict) -> str:
    lines = [
        f"rows                 {s['rows']}",
        f"ValidRatio           {s['valid_ratio']:.4f}  ({s['valid']}/{s['rows']})",
        f"HitRatio@1 (valid)   {s['hit_ratio@1_of_valid']:.4f}  ({s['correct']}/{s['valid']}, official code)",
        f"HitRatio@1 (total)   {s['hit_ratio@1_of_total']:.4f}  ({s['correct']}/{s['rows']}, published tables)",
        f"SASRec HitRatio@1    {s['sasrec_hit_ratio@1']:.4f}  (same candidates)",
        f"wall time            {s['wall_seconds']:.1f} s",
    ]
    mismatch = s.get("catalogue_mismatch")
    if mismatch:
        lines.insert(
            0,
            f"catalogue            dataset titles differ from the model's in {mismatch['items_differing']} "
            "items; judged with the model's titles (--allow-catalogue-mismatch)",
        )
    return "\n".join(lines)


@click.command(name="eval")
@click.argument("target", type=click.Path(path_type=str))
@data_options
@click.option(
    "--backend",
    type=click.Choice(["torch", "ort", "trt"]),
    default="torch",
    show_default=True,
    help="torch: a checkpoint in PyTorch (the reference); ort: an export folder in onnxruntime; "
    "trt: an engines folder from `ilora-export trt` (TensorRT, CUDA).",
)
@device_option
@batch_size_option
@limit_option
@seed_option
@eval_set_option
@prompt_file_option
@click.option("--base-model", default=None, help="Base-model folder, when not where the checkpoint recorded it.")
@threads_option
@click.option(
    "--bank",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    help="ort: another expert bank (bank.safetensors of a compatible export) instead of the export's.",
)
@output_option
@click.option(
    "--shard-rows",
    type=click.IntRange(min=1),
    default=None,
    help="Rows per result shard under -o (default 64). A killed run resumes at the first "
    "unfinished shard when run again with the same arguments.",
)
@click.option("--restart", is_flag=True, help="Discard the shards already in -o and evaluate from scratch.")
@click.option(
    "--ray",
    "use_ray",
    is_flag=True,
    help="Evaluate the shards on Ray Data actors (one onnxruntime session each; needs -o, "
    "--backend ort and `pip install ilora-export[ray]`).",
)
@click.option(
    "--address",
    default=None,
    help="Ray cluster address (default: a local Ray instance on this machine, or RAY_ADDRESS).",
)
@click.option(
    "--num-workers",
    type=click.IntRange(min=1),
    default=None,
    help="Ray actors (default: the cluster's CPUs / --threads).",
)
@click.option(
    "--allow-catalogue-mismatch",
    is_flag=True,
    help="Evaluate even when the dataset's item titles differ from the model's catalogue "
    "(catalogue.json of the checkpoint or export): prompts and judgements then use the "
    "model's titles, and summary.json records the mismatch. Item counts must still match.",
)
def evaluate(
    target,
    data_dir,
    split,
    backend,
    device,
    batch_size,
    limit,
    seed,
    eval_set,
    prompt_file,
    base_model,
    threads,
    bank,
    output,
    shard_rows,
    restart,
    use_ray,
    address,
    num_workers,
    allow_catalogue_mismatch,
):
    """Evaluate TARGET: greedy answers, ValidRatio, HitRatio@1 (and the SASRec-only baseline).

    TARGET is a checkpoint folder (--backend torch) or an export folder from `ilora-export onnx`
    (--backend ort). Both run the same generator, so their answers can be compared row by row.
    With -o OUTPUT the results are written shard by shard (Parquet, OUTPUT/shards/), then
    predictions.csv, summary.json and the evaluation set used; rerunning the same command after a
    crash or a kill keeps the finished shards and evaluates only the rest. The dataset must be the
    model's (same item catalogue, same history length); this is checked before any work.

    \b
    Examples:
      ilora-export eval runs/lastfm-smollm2/onnx --backend ort --data DIR -o results/
      ilora-export eval runs/lastfm-smollm2/onnx --backend ort --data DIR -o results/ --ray --num-workers 2
    """
    from ilora_export.eval.request import EvalRequest
    from ilora_export.eval.run import run_eval

    request = EvalRequest(
        target,
        data_dir,
        split,
        backend=backend,
        device=device,
        batch_size=batch_size,
        limit=limit,
        seed=seed,
        eval_set=eval_set,
        prompt_file=prompt_file,
        base_model=base_model,
        threads=threads,
        bank=bank,
        output=output,
        shard_rows=shard_rows,
        restart=restart,
        ray=use_ray,
        address=address,
        num_workers=num_workers,
        allow_catalogue_mismatch=allow_catalogue_mismatch,
    )
    summary = run_eval(request)
    click.echo(format_summary(summary))
    if output:
        click.echo(f"results: {output}")
