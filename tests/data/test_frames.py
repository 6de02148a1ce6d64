"""Split files are unpickled with an allowlist: planted globals are refused without running, real frames load."""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import shlex

import numpy as np
import pandas as pd
import pytest

from ilora_export.data.llara import SPLIT_FILES, load_dataset, read_split_file
from ilora_export.data.synthetic import write_synthetic_dataset
from ilora_export.errors import UnsafePickleError
from tests.factories import ref_path

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


class _RunsCommand:
    """Unpickling it runs a shell command: what a tampered split file does before handing back its frame."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _plant(root, marker, protocol: int):
    """Re-save the test split of ``root`` with a payload among the frame's attributes; its path."""
    path = root / SPLIT_FILES["test"]
    frame = pd.read_pickle(path)
    frame.attrs = {"note": _RunsCommand(f"touch {shlex.quote(str(marker))}")}
    frame.to_pickle(path, protocol=protocol)
    return path


SYSTEM = f"{os.system.__module__}.system"  # posix.system on Linux


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_planted_payload_is_refused_and_never_runs(toy_copy, tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = _plant(toy_copy, marker, protocol)
    with pytest.raises(UnsafePickleError) as err:
        load_dataset(toy_copy).split("test")
    assert f"{path}: refusing to load global '{SYSTEM}'" in str(err.value)
    assert "malicious" in err.value.hint
    assert not marker.exists()
    # the file is what it claims: plain pandas runs the payload and hands back the real frame
    assert isinstance(pd.read_pickle(path), pd.DataFrame) and marker.exists()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_evalset_command_refuses_planted_split(toy_copy, tmp_path, capsys, protocol):
    from ilora_export.cli import main

    marker, out = tmp_path / "pwned", tmp_path / "e.jsonl"
    path = _plant(toy_copy, marker, protocol)
    with pytest.raises(SystemExit) as exit_info:
        main(["evalset", "--data", str(toy_copy), "--split", "test", "-o", str(out)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"Error: {path}: refusing to load global '{SYSTEM}'" in err
    assert "\nHint: " in err and "Traceback" not in err
    assert not marker.exists() and not out.exists()


def _steam_like() -> pd.DataFrame:
    """Plain integer ids, 3581 items (padding id 3581), targets as an int64 column."""
    rng = np.random.default_rng(3)
    lens = rng.integers(1, 11, size=40)
    seqs = [rng.integers(0, 3581, size=n).tolist() + [3581] * (10 - n) for n in lens]
    return pd.DataFrame({"seq": seqs, "len_seq": lens.astype(np.int64), "next": rng.integers(0, 3581, size=40)})


def _synthetic(layout: str):
    def make(tmp_path) -> pd.DataFrame:
        root = write_synthetic_dataset(tmp_path / layout, num_rows=(30, 5, 5), layout=layout)
        return pd.read_pickle(root / SPLIT_FILES["train"])

    return make


FRAMES = {
    "lastfm-like": _synthetic("id2name"),
    "movielens": _synthetic("movielens"),  # (item, rating) tuples
    "steam-like": lambda tmp_path: _steam_like(),
    "object-scalars": lambda tmp_path: _steam_like().astype(object),  # numpy scalars inside object columns
    "python-strings": lambda tmp_path: _steam_like().set_axis(
        pd.Index(["seq", "len_seq", "next"], dtype=pd.StringDtype("python")), axis=1
    ),
    "int-index": lambda tmp_path: _steam_like().set_axis(pd.Index(np.arange(40, dtype=np.int64) * 3)),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", FRAMES)
def test_legit_frames_load_like_pandas(tmp_path, kind, protocol):
    path = tmp_path / "train_data.df"
    FRAMES[kind](tmp_path).to_pickle(path, protocol=protocol)
    pd.testing.assert_frame_equal(read_split_file(path), pd.read_pickle(path))


@pytest.mark.parametrize("name", SPLIT_FILES.values())
def test_official_lastfm_files_load_like_pandas(name):
    path = ref_path("data", "lastfm", name)
    pd.testing.assert_frame_equal(read_split_file(path), pd.read_pickle(path))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_official_lastfm_frame_in_every_protocol(tmp_path, protocol):
    frame = pd.read_pickle(ref_path("data", "lastfm", "Test_data.df"))
    path = tmp_path / "Test_data.df"
    frame.to_pickle(path, protocol=protocol)
    pd.testing.assert_frame_equal(read_split_file(path), frame)


def test_older_pandas_index_names_load(tmp_path):
    """pandas 1.x wrote integer indexes as ``pandas.core.indexes.numeric.Int64Index``."""
    frame = _steam_like().set_axis(pd.Index(np.arange(40, dtype=np.int64) * 3))
    data = pickle.dumps(frame, protocol=2)
    old = data.replace(b"cpandas\nIndex\n", b"cpandas.core.indexes.numeric\nInt64Index\n", 1)
    assert old != data
    (tmp_path / "old.df").write_bytes(old)
    pd.testing.assert_frame_equal(read_split_file(tmp_path / "old.df"), frame)


class _OldPickler(pickle.Pickler):
    """Pickles a frame's block manager as pandas 1.x did: an empty object, then its state (the blocks'
    values and column positions, ``mgr_locs``) set with BUILD."""

    def __init__(self, file, protocol, locs=None):
        super().__init__(file, protocol=protocol)
        self.locs = locs

    def reducer_override(self, obj):
        from pandas.core.internals.managers import BlockManager

        if type(obj) is not BlockManager:
            return NotImplemented
        blocks = [{"values": b.values, "mgr_locs": b.mgr_locs.indexer} for b in obj.blocks]
        if self.locs is not None:
            blocks[0]["mgr_locs"] = self.locs
        axes = list(obj.axes)
        state = (
            axes,
            [b.values for b in obj.blocks],
            [obj.items[b.mgr_locs.indexer] for b in obj.blocks],
            {"0.14.1": {"axes": axes, "blocks": blocks}},
        )
        return copyreg.__newobj__, (BlockManager,), state


def _old_style(frame, protocol, locs=None) -> bytes:
    buf = io.BytesIO()
    _OldPickler(buf, protocol, locs).dump(frame)
    return buf.getvalue()


@pytest.mark.parametrize("protocol", [2, 5])
def test_older_pandas_block_manager_state_loads(tmp_path, protocol):
    frame = _steam_like()
    (tmp_path / "old.df").write_bytes(_old_style(frame, protocol))
    pd.testing.assert_frame_equal(read_split_file(tmp_path / "old.df"), frame)


class _BlockPickler(pickle.Pickler):
    """Pickles every block as pointing at column positions far beyond the frame's columns."""

    def reducer_override(self, obj):
        from pandas._libs.internals import _unpickle_block
        from pandas.core.internals.blocks import Block

        if not isinstance(obj, Block):
            return NotImplemented
        start = 10**12
        return _unpickle_block, (obj.values, slice(start, start + len(obj.mgr_locs), 1), obj.ndim)


def test_block_placement_outside_the_columns_is_refused(tmp_path):
    # pandas would write (and crash) far outside its own arrays on first access to such a frame
    buf = io.BytesIO()
    _BlockPickler(buf, protocol=5).dump(_steam_like())
    (tmp_path / "bad.df").write_bytes(buf.getvalue())
    with pytest.raises(UnsafePickleError, match="bad.df: .*column position"):
        read_split_file(tmp_path / "bad.df")


def test_old_block_state_outside_the_columns_is_refused(tmp_path):
    (tmp_path / "bad.df").write_bytes(_old_style(_steam_like(), 2, locs=slice(10**12, 10**12 + 1, 1)))
    with pytest.raises(UnsafePickleError, match="bad.df: .*column position"):
        read_split_file(tmp_path / "bad.df")


class _Reduce:
    """Pickles as ``func(*args)`` followed by BUILD ``state``: for hand-made pickles."""

    def __init__(self, func, args, state=None):
        self.rv = (func, args) if state is None else (func, args, state)

    def __reduce__(self):
        return self.rv


def test_object_array_from_raw_bytes_is_refused(tmp_path):
    # an object dtype whose flags BUILD clears no longer stops numpy from taking raw bytes as pointers
    _reconstruct = np.zeros(1).__reduce__()[0]  # numpy.core or numpy._core, as this numpy pickles it
    dtype = _Reduce(np.dtype, ("O8", False, True), (3, "|", None, None, None, -1, -1, 0))
    array = _Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, (1,), dtype, False, b"A" * 8))
    (tmp_path / "bad.df").write_bytes(pickle.dumps(array, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"bad.df: .*dtype"):
        read_split_file(tmp_path / "bad.df")


def test_object_array_from_memory_is_refused(tmp_path):
    _frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    # numpy itself refuses an intact object dtype over raw bytes
    with pytest.raises(ValueError, match="cannot create an OBJECT array from memory buffer"):
        _frombuffer(b"A" * 8, np.dtype(object), (1,), "C")
    path = tmp_path / "bad.df"
    path.write_bytes(pickle.dumps(_Reduce(_frombuffer, (b"A" * 8, np.dtype(object), (1,), "C")), protocol=5))
    with pytest.raises(UnsafePickleError, match="bad.df: .*object"):
        read_split_file(path)


def test_refused_name_comes_before_anything_runs(tmp_path):
    path = tmp_path / "x.df"
    path.write_bytes(pickle.dumps([_RunsCommand(f"touch {shlex.quote(str(tmp_path / 'pwned'))}")], protocol=0))
    with pytest.raises(UnsafePickleError, match=f"x.df: refusing to load global '{SYSTEM}'") as err:
        read_split_file(path)
    assert "dataset" in err.value.hint and not (tmp_path / "pwned").exists()


def test_arrow_strings_with_offsets_past_their_data_are_refused(tmp_path):
    import pyarrow as pa

    strings = pa.array(["abc", "de"], pa.large_string())
    arrow_type, length, nulls, offset, buffers, children, dictionary = strings.__reduce__()[1][0]
    offsets = pa.py_buffer(np.array([0, 3, 10**9], dtype=np.int64).tobytes())
    record = (arrow_type, length, nulls, offset, [None, offsets, buffers[2]], children, dictionary)
    path = tmp_path / "bad.df"
    path.write_bytes(pickle.dumps(_Reduce(pa.lib._restore_array, (record,)), protocol=5))
    with pytest.raises(UnsafePickleError, match="bad.df: malformed pyarrow string array"):
        read_split_file(path)


def test_calling_a_frame_class_is_refused(tmp_path):
    path = tmp_path / "call.df"
    path.write_bytes(pickle.dumps(_Reduce(pd.DataFrame, ({"seq": [[1]]},)), protocol=2))
    with pytest.raises(UnsafePickleError, match="call.df: refusing to call DataFrame with arguments"):
        read_split_file(path)


class _ClassSwapPickler(pickle.Pickler):
    """Pickles the frame with a ``__class__`` entry in its state (BUILD would assign it)."""

    def reducer_override(self, obj):
        if type(obj) is not pd.DataFrame:
            return NotImplemented
        func, args, state = obj.__reduce_ex__(2)[:3]
        return func, args, {**state, "__class__": pd.DataFrame}


def test_frame_state_may_not_change_the_class(tmp_path):
    buf = io.BytesIO()
    _ClassSwapPickler(buf, protocol=2).dump(_steam_like())
    path = tmp_path / "cls.df"
    path.write_bytes(buf.getvalue())
    with pytest.raises(UnsafePickleError, match="cls.df: refusing DataFrame state with special attributes"):
        read_split_file(path)


def test_steam_like_dataset_loads(tmp_path):
    root = tmp_path / "steam"
    root.mkdir()
    (root / "id2name.txt").write_text("".join(f"{i}::Game {i}\n" for i in range(3581)), encoding="utf-8")
    frame = _steam_like()
    for name in SPLIT_FILES.values():
        frame.to_pickle(root / name)
    test = load_dataset(root).split("test")
    keep = frame[frame["len_seq"] >= 3]
    assert test["next"].tolist() == keep["next"].tolist()
    assert test["seq"].tolist() == keep["seq"].tolist() and test["seq"][0][-1] == 3581
