"""``ilora-export trt``."""

from __future__ import annotations

import click


@click.command(name="trt")
@click.argument("export_dir", type=click.Path(path_type=str))
@click.option(
    "--fp16",
    is_flag=True,
    help="Build from the fp16 graph (export with --dtype fp16): strongly typed, fp32 islands kept.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Engines folder (default: EXPORT_DIR/trt).",
)
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--max-prompt",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Longest prompt in tokens (prefill profile).",
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Tokens generated after the prompt (decode profile).",
)
@click.option(
    "--num-candidates",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Candidates per prompt (encoder profile).",
)
@click.option(
    "--workspace", "workspace_mib", type=click.IntRange(min=1), default=None, help="Builder workspace limit in MiB."
)
@click.option(
    "--emit-script",
    is_flag=True,
    help="Only write build_engines.sh (the equivalent trtexec commands), engines.json and the plans' metadata, "
    "to build on the target device next to a copy of the export (works without TensorRT).",
)
def trt(export_dir, fp16, output, max_batch, max_prompt, max_new_tokens, num_candidates, workspace_mib, emit_script):
    """Build TensorRT engines for EXPORT_DIR: the encoder, and the decoder with a prefill and a decode profile.

    \b
    Needs TensorRT >= 10.2 (pip install -e ".[trt]") and an NVIDIA GPU. fp32 exports build fp32
    engines (TF32 off), fp16 exports with --fp16. Each .plan gets a .json beside it (TensorRT version,
    GPU and compute capability, profiles, source manifest hash); a timing cache is kept in the folder.
    Evaluate with:
      ilora-export eval ENGINES_DIR --backend trt --data DIR
    """
    from ilora_export.trt.build import build_engines
    from ilora_export.trt.profiles import Limits

    build_engines(
        export_dir,
        output,
        fp16=fp16,
        emit_script=emit_script,
        workspace_mib=workspace_mib,
        limits=Limits(max_batch, max_prompt, max_new_tokens, num_candidates),
        log=click.echo,
    )
