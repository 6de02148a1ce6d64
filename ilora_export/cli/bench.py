"""``ilora-export bench``."""

from __future__ import annotations

import click

from ilora_export.bench.peers import PEERS
from ilora_export.bench.suite import ROWS
from ilora_export.cli.options import limit_option, threads_option


@click.command()
@click.argument("export_dir", type=click.Path(path_type=str))
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=str),
    help="Dataset folder whose split is evaluated in full by every row.",
)
@click.option("--split", type=click.Choice(["train", "valid", "test"]), default="test", show_default=True)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=str),
    default=None,
    help="The checkpoint the export came from (default: the path its manifest records).",
)
@click.option(
    "--rows",
    default=",".join(ROWS),
    show_default=True,
    help="Comma-separated rows to measure (int8/int4: the export quantized by `ilora-export quantize`).",
)
@threads_option
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Repeats of the latency measurements (medians, min/max reported).",
)
@click.option(
    "--eval-repeats", type=click.IntRange(min=1), default=1, show_default=True, help="Repeats of each full evaluation."
)
@limit_option
@click.option(
    "--peer",
    "peers",
    multiple=True,
    type=click.Choice(PEERS),
    help="Opt-in peer on the plain base model, timed back to back with our plain export on the same token ids "
    "and threads (genai: onnxruntime-genai 0.18 fp32 from its model builder; its own virtual environment is "
    "created once with pip under OUTPUT/exports/peer-genai-venv, which needs the package registry).",
)
@click.option(
    "--peer-rounds",
    type=click.IntRange(min=1),
    default=None,
    help="Rounds of the paired peer comparison (each: ours, then the peer) [default: max(5, --repeats)].",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=str),
    default="benchmarks/results",
    show_default=True,
    help="Where bench.json, bench.md and bench.png go.",
)
def bench(
    export_dir, data_dir, split, checkpoint, rows, threads, repeats, eval_repeats, limit, peers, peer_rounds, output
):
    """Benchmark EXPORT_DIR against PyTorch eager and its own variants, side by side in one run.

    \b
    Each row runs in its own process, one after the other: prefill latency by prompt length (batch 1),
    decode ms/token, full-evaluation throughput at batch 1 and 8, peak RSS; plus the hardware floor
    (measured memory bandwidth and GEMM rate), the speed targets (met / missed / not measured) and,
    with --peer, a paired comparison of our plain export with a peer. Results: JSON, a Markdown table,
    a PNG plot.
    """
    from ilora_export.bench.suite import markdown, run_bench

    report = run_bench(
        export_dir,
        data_dir,
        split=split,
        checkpoint=checkpoint,
        rows=tuple(r.strip() for r in rows.split(",") if r.strip()),
        threads=threads,
        repeats=repeats,
        eval_repeats=eval_repeats,
        limit=limit,
        peers=peers,
        peer_rounds=peer_rounds,
        output=output,
        log=click.echo,
    )
    click.echo("")
    click.echo(markdown(report))
