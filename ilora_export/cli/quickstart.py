"""``ilora-export quickstart``."""

from __future__ import annotations

import click

from ilora_export.cli.options import threads_option


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=str), default="recipes/quickstart.yaml")
@click.argument("overrides", nargs=-1)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Evaluate the first N rows of the evaluation split with each backend.",
)
@threads_option
def quickstart(recipe, overrides, limit, threads):
    """The whole pipeline on the embedded default: fetch, fine-tune, export, evaluate with torch and ORT.

    \b
    RECIPE defaults to recipes/quickstart.yaml (MovieLens-100K demo, built on first use; about
    20 minutes on 2 CPU cores). KEY=VALUE OVERRIDES work as in `finetune`, e.g. your own data:
      ilora-export quickstart recipes/quickstart.yaml data.root=DATA_DIR
    Running it again resumes: finished stages are reused.
    """
    from ilora_export.quickstart import format_table, run_quickstart
    from ilora_export.train.recipe import load_recipe

    summary = run_quickstart(load_recipe(recipe, overrides), limit=limit, threads=threads, log=click.echo)
    click.echo("")
    click.echo(format_table(summary))
