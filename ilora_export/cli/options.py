"""Options shared by several subcommands, each defined once as a decorator."""

from __future__ import annotations

import click


def _compose(*decorators):
    def apply(fn):
        for deco in reversed(decorators):
            fn = deco(fn)
        return fn

    return apply


data_options = _compose(
    click.option(
        "--data",
        "data_dir",
        required=True,
        type=click.Path(file_okay=False, path_type=str),
        help="Dataset folder in the LLaRA layout (train_data.df, Val_data.df, Test_data.df, "
        "and id2name.txt or u.item).",
    ),
    click.option(
        "--split",
        type=click.Choice(["train", "valid", "test"]),
        default="test",
        show_default=True,
        help="Which split to use.",
    ),
)

seed_option = click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for the 19 sampled negative candidates of each row."
)

device_option = click.option(
    "--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True, help="Where PyTorch runs."
)

batch_size_option = click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Rows generated together (left-padded).",
)

limit_option = click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate only the first N rows.")

output_option = click.option(
    "-o", "--output", "output", type=click.Path(path_type=str), default=None, help="Output folder."
)

prompt_file_option = click.option(
    "--prompt-file",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    help="Prompt templates, one per line with [HistoryHere] and [CansHere] "
    "(the official prompt/*.txt files work). Default: the project's own.",
)

cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Download/convert cache (default: $ILORA_EXPORT_CACHE or ~/.cache/ilora-export).",
)

threads_option = click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Intra-op threads for PyTorch and onnxruntime (default: their own choice, usually the physical cores).",
)

eval_set_option = click.option(
    "--eval-set",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    help="A materialized evaluation set (JSON Lines from `ilora-export evalset`); "
    "built from --data/--split/--seed when absent.",
)
