"""The restricted unpickler: planted globals are refused without running, legit files load."""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ilora_export.errors import CheckpointError, UnsafePickleError
from ilora_export.official.safe_pickle import (
    DEFAULT_ALLOWED,
    PickledObject,
    module_state_dict,
    safe_load,
)
from ilora_export.official.sasrec import OFFICIAL_SASREC_ALLOWED, load_official_sasrec
from tests.factories import REF_DIR

OFFICIAL_PT = REF_DIR / "rec_model/lastfm.pt"


class Planted:
    """Unpickling calls ``func(*args)``: what a malicious checkpoint does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _save(obj, path: Path, how: str) -> Path:
    if how == "zip":
        torch.save(obj, path)
    elif how == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    return path


@pytest.mark.parametrize("how", ["zip", "legacy", "plain"])
def test_planted_os_system_is_refused_and_never_runs(tmp_path, how):
    marker = tmp_path / "pwned"
    path = _save(
        {"x": Planted(os.system, f"touch {marker}"), "state_dict": OrderedDict(w=torch.ones(2))},
        tmp_path / "evil.ckpt",
        how,
    )
    with pytest.raises(UnsafePickleError) as err:
        safe_load(path)
    assert f"{os.system.__module__}.system" in str(err.value)  # posix.system on Linux
    assert str(path) in str(err.value)
    assert err.value.hint
    assert not marker.exists()


@pytest.mark.parametrize("how", ["zip", "plain"])
def test_planted_builtins_eval_is_refused_and_never_runs(tmp_path, how):
    marker = tmp_path / "pwned"
    path = _save([Planted(eval, f"open({str(marker)!r}, 'w').close()")], tmp_path / "evil.pt", how)
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval"):
        safe_load(path, OFFICIAL_SASREC_ALLOWED)
    assert not marker.exists()


def test_setting_state_on_an_allowed_class_is_refused(tmp_path):
    # GLOBAL argparse.Namespace; BUILD ({}, {"planted": 1}): plain pickle would setattr on the class.
    path = tmp_path / "build.pkl"
    path.write_bytes(b"cargparse\nNamespace\n(}(S'planted'\nI1\ndtb.")
    with pytest.raises(UnsafePickleError, match="state"):
        safe_load(path)
    assert not hasattr(argparse.Namespace, "planted")


class _Reduce:
    """Pickles as ``func(*args)`` followed by BUILD ``state``: for hand-made pickles."""

    def __init__(self, func, args, state):
        self.rv = (func, args, state)

    def __reduce__(self):
        return self.rv


@pytest.mark.parametrize(
    "spec, state",
    [
        ("V8", (3, "|", None, ("a",), {"a": (np.dtype("i8"), 0)}, 8, 1, 0)),  # fields on a void dtype
        ("i8", (3, "<", None, None, None, -1, -1, 63)),  # an integer flagged as holding object pointers
    ],
)
def test_dtype_state_beyond_byte_order_is_refused(tmp_path, spec, state):
    path = tmp_path / "dtype.pkl"
    path.write_bytes(pickle.dumps([_Reduce(np.dtype, (spec, False, True), state)], protocol=2))
    with pytest.raises(UnsafePickleError, match=f"{path}: .*dtype"):
        safe_load(path)


def test_dtype_byte_order_state_loads(tmp_path):
    path = tmp_path / "dtype.pkl"
    path.write_bytes(pickle.dumps([np.dtype(">i4"), np.float32(2.5), np.int64(-3)], protocol=2))
    assert safe_load(path) == [np.dtype(">i4"), 2.5, -3]


def test_allowlist_is_a_parameter(tmp_path):
    path = _save(OrderedDict(w=torch.ones(2)), tmp_path / "sd.pt", "zip")
    with pytest.raises(UnsafePickleError, match=r"collections\.OrderedDict"):
        safe_load(path, allowed={})
    assert torch.equal(safe_load(path)["w"], torch.ones(2))


@pytest.mark.parametrize("how", ["zip", "legacy"])
def test_tensors_round_trip(tmp_path, how):
    torch.manual_seed(0)
    base = torch.randn(4, 6)
    obj = {
        "base": base,
        "view": base[1:, ::2],
        "bf16": torch.randn(3).to(torch.bfloat16),
        "f16": torch.randn(2, 2).half(),
        "i64": torch.arange(5),
        "bool": torch.tensor([True, False]),
        "empty": torch.zeros(0, 3),
        "param": nn.Parameter(torch.randn(2)),
        "meta": {"step": 7, "name": "x", "size": torch.Size([2, 3]), "np": np.float32(1.5)},
    }
    loaded = safe_load(_save(obj, tmp_path / "t.pt", how))
    for key in ("base", "view", "bf16", "f16", "i64", "bool", "empty", "param"):
        assert loaded[key].dtype == obj[key].dtype and torch.equal(loaded[key], obj[key]), key
    assert isinstance(loaded["param"], nn.Parameter)
    assert loaded["view"].untyped_storage().data_ptr() == loaded["base"].untyped_storage().data_ptr()
    assert loaded["meta"] == {"step": 7, "name": "x", "size": torch.Size([2, 3]), "np": 1.5}


def test_lightning_style_checkpoint_loads(tmp_path):
    state = OrderedDict([("projector.mlp_proj.0.weight", torch.randn(4, 2)), ("router.gate.fc.bias", torch.zeros(4))])
    ckpt = {
        "epoch": 3,
        "global_step": 10,
        "state_dict": state,
        "hyper_parameters": argparse.Namespace(lr=1e-3, router="share", lora_r=8),
    }
    loaded = safe_load(_save(ckpt, tmp_path / "last.ckpt", "zip"))
    assert loaded["hyper_parameters"] == ckpt["hyper_parameters"]
    assert list(loaded["state_dict"]) == list(state)
    assert all(torch.equal(loaded["state_dict"][k], v) for k, v in state.items())


class AttributeDict(dict):
    """Lightning's hyperparameter dict (a dict subclass)."""


def test_lightning_attribute_dict_and_state_dict_metadata_load(tmp_path, monkeypatch):
    for name in ("lightning_fabric", "lightning_fabric.utilities", "lightning_fabric.utilities.data"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["lightning_fabric.utilities.data"].AttributeDict = AttributeDict
    monkeypatch.setattr(AttributeDict, "__module__", "lightning_fabric.utilities.data")
    state = nn.Linear(2, 3).state_dict()  # carries ``_metadata``
    ckpt = {"hyper_parameters": AttributeDict(lr=0.1, router="share"), "state_dict": state}
    loaded = safe_load(_save(ckpt, tmp_path / "pl.ckpt", "zip"))
    assert dict(loaded["hyper_parameters"]) == {"lr": 0.1, "router": "share"}
    assert not isinstance(loaded["hyper_parameters"], AttributeDict)
    assert loaded["state_dict"]._metadata == state._metadata
    assert all(torch.equal(loaded["state_dict"][k], v) for k, v in state.items())


def test_unreadable_files_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        safe_load(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x02not a pickle at all")
    with pytest.raises(CheckpointError, match="junk.pt"):
        safe_load(junk)
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="data.pkl"):
        safe_load(archive)


# ------------------------------------------------------------ a file shaped like the official one


class MultiHeadAttention(nn.Module):
    def __init__(self, hidden_size, num_units, num_heads, dropout_rate):
        super().__init__()
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.linear_q = nn.Linear(hidden_size, num_units)
        self.linear_k = nn.Linear(hidden_size, num_units)
        self.linear_v = nn.Linear(hidden_size, num_units)
        self.dropout = nn.Dropout(dropout_rate)
        self.softmax = nn.Softmax(dim=-1)


class PositionwiseFeedForward(nn.Module):
    def __init__(self, d_in, d_hid, dropout=0.1):
        super().__init__()
        self.w_1 = nn.Conv1d(d_in, d_hid, 1)
        self.w_2 = nn.Conv1d(d_hid, d_in, 1)
        self.layer_norm = nn.LayerNorm(d_in)
        self.dropout = nn.Dropout(dropout)


class SASRec(nn.Module):
    """Same attributes and submodules as the official class; unpickling it would write a marker."""

    marker: Path | None = None

    def __init__(self, hidden_size, item_num, state_size, dropout, device, num_heads=1):
        super().__init__()
        self.state_size, self.hidden_size, self.item_num = state_size, hidden_size, int(item_num)
        self.dropout = nn.Dropout(dropout)
        self.device = device
        self.item_embeddings = nn.Embedding(num_embeddings=item_num + 1, embedding_dim=hidden_size)
        self.positional_embeddings = nn.Embedding(num_embeddings=state_size, embedding_dim=hidden_size)
        self.emb_dropout = nn.Dropout(dropout)
        self.ln_1, self.ln_2, self.ln_3 = (nn.LayerNorm(hidden_size) for _ in range(3))
        self.mh_attn = MultiHeadAttention(hidden_size, hidden_size, num_heads, dropout)
        self.feed_forward = PositionwiseFeedForward(hidden_size, hidden_size, dropout)
        self.s_fc = nn.Linear(hidden_size, item_num)

    def __setstate__(self, state):
        Path(state["marker_path"]).write_text("ran")
        super().__setstate__(state)


@pytest.fixture
def official_like(tmp_path, monkeypatch) -> tuple[Path, SASRec]:
    """torch.save of a whole module pickled under the official names (``__main__.SASRec``...)."""
    modules_ori = types.ModuleType("SASRecModules_ori")
    for cls in (MultiHeadAttention, PositionwiseFeedForward):
        monkeypatch.setattr(cls, "__module__", "SASRecModules_ori")
        setattr(modules_ori, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "SASRecModules_ori", modules_ori)
    monkeypatch.setattr(SASRec, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "SASRec", SASRec, raising=False)
    torch.manual_seed(0)
    model = SASRec(8, np.int64(11), 4, 0.25, torch.device("cuda:0"), num_heads=2)
    model.marker_path = str(tmp_path / "ran")
    path = tmp_path / "official_like.pt"
    torch.save(model, path)
    return path, model


def test_official_like_pickle_loads_as_inert_records(official_like, tmp_path):
    path, model = official_like
    with pytest.raises(UnsafePickleError, match=r"__main__\.SASRec"):
        safe_load(path)  # not in the default allowlist
    record = safe_load(path, OFFICIAL_SASREC_ALLOWED)
    assert isinstance(record, PickledObject) and not isinstance(record, nn.Module)
    assert record.qualname == "__main__.SASRec"
    assert (record.hidden_size, record.item_num, record.state_size) == (8, 11, 4)
    assert record._modules["mh_attn"].qualname == "SASRecModules_ori.MultiHeadAttention"
    state = module_state_dict(record)
    assert list(state) == list(model.state_dict())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not (tmp_path / "ran").exists()  # the pickled class's __setstate__ never ran


def test_official_like_pickle_becomes_our_sasrec(official_like, tmp_path):
    path, model = official_like
    ours = load_official_sasrec(path)
    assert ours.config() == {"item_num": 11, "hidden": 8, "state_size": 4, "num_heads": 2, "dropout": 0.25}
    theirs = model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in ours.state_dict().items())
    assert not (tmp_path / "ran").exists()


@pytest.mark.skipif(not OFFICIAL_PT.is_file(), reason=f"official reference files not found under {REF_DIR}")
def test_official_file_needs_the_official_allowlist():
    with pytest.raises(UnsafePickleError, match=r"__main__\.SASRec") as err:
        safe_load(OFFICIAL_PT, DEFAULT_ALLOWED)
    assert "lastfm.pt" in str(err.value)
    record = safe_load(OFFICIAL_PT, OFFICIAL_SASREC_ALLOWED)
    assert record.item_num == 4606 and record.hidden_size == 64
    assert tuple(module_state_dict(record)["item_embeddings.weight"].shape) == (4607, 64)
