"""Reading the official pretrained SASRec (``torch.save(model)`` of LLaRA's SASRec) without running it.

The pickle is read by :func:`ilora_export.official.safe_pickle.safe_load` with the official class
names mapped to inert stand-ins; hyperparameters come from the recorded attributes, weights from the
recorded ``_parameters``, and both go into our own :class:`SASRec` (strict load). A plain state dict
of the same names is accepted too (hyperparameters then come from the tensor shapes, one head).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ilora_export.errors import CheckpointError
from ilora_export.model.sasrec import SASRec
from ilora_export.official.safe_pickle import (
    DEFAULT_ALLOWED,
    TORCH_NN_ALLOWED,
    PickledObject,
    module_state_dict,
    safe_load,
    stand_ins,
)

#: Names under which the official classes appear in pickles (the training script runs as
#: ``__main__``; the modules file is imported as ``SASRecModules_ori``).
OFFICIAL_SASREC_NAMES = (
    "__main__.SASRec",
    "A_SASRec_final_bce_llm.SASRec",
    "recommender.A_SASRec_final_bce_llm.SASRec",
)
OFFICIAL_MODULE_NAMES = tuple(
    f"{pkg}SASRecModules_ori.{cls}"
    for pkg in ("", "recommender.")
    for cls in ("MultiHeadAttention", "PositionwiseFeedForward")
)

#: Allowlist for official SASRec files: tensor machinery, torch.nn layers and the official classes,
#: all of them stand-ins.
OFFICIAL_SASREC_ALLOWED: dict[str, object] = {
    **DEFAULT_ALLOWED,
    **TORCH_NN_ALLOWED,
    **stand_ins(*OFFICIAL_SASREC_NAMES, *OFFICIAL_MODULE_NAMES),
}


def _number(obj: PickledObject, attr: str, kind: type, source: str):
    try:
        return kind(obj.__dict__[attr])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{source}: pickled {obj.qualname} lacks a usable {attr!r}") from None


def _config_from_record(record: PickledObject, source: str) -> dict:
    modules = record.__dict__.get("_modules") or {}
    attn, dropout = modules.get("mh_attn"), modules.get("emb_dropout") or modules.get("dropout")
    if not isinstance(attn, PickledObject) or not isinstance(dropout, PickledObject):
        raise CheckpointError(f"{source}: pickled SASRec lacks its attention or dropout module")
    return {
        "item_num": _number(record, "item_num", int, source),
        "hidden": _number(record, "hidden_size", int, source),
        "state_size": _number(record, "state_size", int, source),
        "num_heads": _number(attn, "num_heads", int, source),
        "dropout": _number(dropout, "p", float, source),
    }


def _config_from_state_dict(state: Mapping[str, torch.Tensor], source: str) -> dict:
    try:
        item_num, hidden = state["s_fc.weight"].shape
        state_size = state["positional_embeddings.weight"].shape[0]
    except (KeyError, ValueError, AttributeError):
        raise CheckpointError(f"{source}: not a SASRec state dict (no s_fc / positional weights)") from None
    return {"item_num": int(item_num), "hidden": int(hidden), "state_size": int(state_size)}


def sasrec_from_state(state: Mapping[str, torch.Tensor], config: dict, source: str) -> SASRec:
    """Build :class:`SASRec` from ``config`` and load ``state`` strictly (errors name ``source``)."""
    model = SASRec(**config)
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{source}: SASRec weights do not fit {config}: {exc}",
            hint="The file must hold the official one-block SASRec (or a state dict of its names).",
        ) from None
    return model.eval()


def load_official_sasrec(path: str | Path, allowed: Mapping[str, object] | None = None) -> SASRec:
    """Our :class:`SASRec`, in eval mode, with the weights of an official SASRec file."""
    source = str(path)
    obj = safe_load(path, OFFICIAL_SASREC_ALLOWED if allowed is None else allowed)
    if isinstance(obj, PickledObject) and obj.qualname.rsplit(".", 1)[-1] == "SASRec":
        return sasrec_from_state(module_state_dict(obj), _config_from_record(obj, source), source)
    if isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return sasrec_from_state(obj, _config_from_state_dict(obj, source), source)
    raise CheckpointError(
        f"{source}: holds {getattr(obj, 'qualname', type(obj).__name__)}, not a pickled SASRec",
        hint="Pass the official rec_model .pt file (torch.save of the SASRec module).",
    )
