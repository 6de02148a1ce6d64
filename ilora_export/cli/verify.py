"""``ilora-export verify``."""

from __future__ import annotations

import click

from ilora_export.cli.options import (
    batch_size_option,
    eval_set_option,
    limit_option,
    seed_option,
    threads_option,
)


def format_report(r: dict) -> str:
    lg = r["logits"]
    baked = ", experts baked" if r["bake_experts"] else ""
    if r.get("quantization"):
        baked += f", {r['quantization']['bits']}-bit weights: differences are reported, not failed"
    lines = [f"export {r['export']} ({r['dtype']}{baked}) vs checkpoint {r['checkpoint']}"]
    if "prefill_logits_max_abs" in lg:
        lines.append(
            f"logits max |delta|   prefill {lg['prefill_logits_max_abs']:.2e}   decode "
            f"{lg['decode_logits_max_abs']:.2e}   greedy tokens agree {lg['greedy_token_agreement']:.0%}"
        )
    a = r.get("answers")
    if a:
        lines.append(f"answers              {a['agree']}/{a['rows']} identical ({a['agreement']:.2%}) on {a['split']}")
        for name in ("torch", "ort"):
            s = a[name]
            lines.append(
                f"  {name:<6} ValidRatio {s['valid_ratio']:.4f}  HitRatio@1 {s['hit_ratio@1_of_valid']:.4f} "
                f"(valid) / {s['hit_ratio@1_of_total']:.4f} (total)"
            )
    lines.append("OK" if r["ok"] else "FAILED: " + "; ".join(r["problems"]))
    return "\n".join(lines)


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.argument("export_dir", type=click.Path(path_type=str))
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Dataset folder: also compare every answer of its evaluation set.",
)
@click.option("--split", type=click.Choice(["train", "valid", "test"]), default="test", show_default=True)
@seed_option
@eval_set_option
@limit_option
@batch_size_option
@threads_option
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=str), default=None, help="Write the report (JSON) here."
)
def verify(checkpoint, export_dir, data_dir, split, seed, eval_set, limit, batch_size, threads, output):
    """Prove EXPORT_DIR answers as CHECKPOINT does: logits at prefill and decode, and (with --data)
    every answer of an evaluation set. Exits non-zero when an fp32 export differs on any answer.
    """
    from ilora_export.errors import ValidationError
    from ilora_export.eval.verify import verify_export

    try:
        report = verify_export(
            checkpoint,
            export_dir,
            data_dir=data_dir,
            split=split,
            seed=seed,
            eval_set=eval_set,
            limit=limit,
            batch_size=batch_size,
            threads=threads,
            output=output,
        )
    except ValidationError as err:
        click.echo(format_report(err.report))
        raise
    click.echo(format_report(report))
