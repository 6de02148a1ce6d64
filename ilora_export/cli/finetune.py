"""``ilora-export finetune``."""

from __future__ import annotations

import click


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=str))
@click.argument("overrides", nargs=-1)
@click.option(
    "--no-resume",
    is_flag=True,
    help="Start over even if OUTPUT_DIR holds a trainer state (stage 1 is trained again too).",
)
def finetune(recipe, overrides, no_resume):
    """Fine-tune iLoRA from a RECIPE (YAML), with optional KEY=VALUE OVERRIDES.

    \b
    Stage 1: SASRec (the recipe's pretrained official .pt, or trained here).
    Stage 2: the expert bank, gate and projector, base LLM frozen; LM loss on answer tokens.
    Checkpoints go to OUTPUT_DIR/ckpt every train.save_every steps; running the same command again
    resumes from OUTPUT_DIR/train_state (and re-saves OUTPUT_DIR/ckpt from it when it is missing or
    damaged). A SASRec trained in stage 1 is reused only if it was made from the same data, SASRec
    settings and seed.

    \b
    Example:
      ilora-export finetune recipes/lastfm-smollm2.yaml train.max_steps=50 adapter.num_experts=1
    """
    from ilora_export.train.finetune import finetune as run
    from ilora_export.train.recipe import load_recipe

    result = run(load_recipe(recipe, overrides), resume=not no_resume, log=click.echo)
    click.echo(f"checkpoint: {result.checkpoint}  ({result.steps} steps, {result.wall_seconds:.0f} s)")
    if result.eval_summary:
        s = result.eval_summary
        click.echo(
            f"{s['split']} ({s['rows']} rows): ValidRatio {s['valid_ratio']:.4f}  "
            f"HitRatio@1 {s['hit_ratio@1_of_valid']:.4f} (of valid) / {s['hit_ratio@1_of_total']:.4f} "
            f"(of total)  SASRec {s['sasrec_hit_ratio@1']:.4f}"
        )
