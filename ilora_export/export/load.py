"""Loading an export directory: the verified manifest plus what the generator needs on the host."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ilora_export.checkpoint.format import read_catalogue, read_templates
from ilora_export.errors import ExportError
from ilora_export.export.manifest import (
    CATALOGUE,
    EMBEDDINGS,
    PROMPTS,
    TOKENIZER,
    ExportInfo,
    read_manifest,
)
from ilora_export.runtime.generator import PromptAssets


@dataclass
class LoadedExport:
    info: ExportInfo
    assets: PromptAssets
    embeddings: np.ndarray  # [V, H] token embeddings in the decoder's dtype (looked up on the host)

    @property
    def path(self) -> Path:
        return self.info.path


def load_export(path, *, verify_files: bool = True) -> LoadedExport:
    """Read and verify ``path`` (hashes of every file against manifest.json); no session is created."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    info = read_manifest(path, verify_files=verify_files)
    m = info.manifest
    tokenizer = AutoTokenizer.from_pretrained(info.path / TOKENIZER, local_files_only=True)
    tokenizer.padding_side = "left"
    if {k: tokenizer.convert_tokens_to_ids(k) for k in m["tokens"]} != m["tokens"]:
        raise ExportError(f"{info.path / TOKENIZER}: special-token ids differ from manifest.json",
                          "the export is inconsistent; export again")
    try:
        embeddings = load_file(info.path / EMBEDDINGS)["input_embeddings"]
    except (SafetensorError, OSError, KeyError) as err:
        raise ExportError(f"{info.path / EMBEDDINGS}: unreadable ({err})", "export again") from None
    assets = PromptAssets(tokenizer, read_catalogue(info.path / CATALOGUE),
                          read_templates(info.path / PROMPTS, m["prompts_source"]), dict(m["tokens"]),
                          set(m["eos_token_ids"]))
    return LoadedExport(info, assets, embeddings)
