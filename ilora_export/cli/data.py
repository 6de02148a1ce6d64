"""``ilora-export evalset``: fix the candidates of an evaluation split in a file."""

from __future__ import annotations

import click

from ilora_export.cli.options import data_options, output_option, seed_option


@click.command("evalset")
@data_options
@seed_option
@output_option
def evalset(data_dir, split, seed, output):
    """Write the evaluation set of a split: each row's target plus 19 sampled negatives, shuffled.

    -o takes a file, or a folder for the default name evalset-DATASET-SPLIT-seedSEED.jsonl
    (default: the current folder). The same data and seed always give a byte-identical file.
    """
    from ilora_export.data.evalset import export_eval_set

    result, path = export_eval_set(data_dir, split=split, seed=seed, output=output)
    click.echo(
        f"Wrote {len(result.rows)} rows of {result.dataset}/{split} (seed {seed}, "
        f"{result.num_candidates} candidates each) to {path}"
    )
