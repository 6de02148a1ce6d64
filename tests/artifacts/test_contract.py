"""Graph contracts: plain data that round-trips, the declared decoder interface, and the check of a real
onnxruntime session against it."""

import json
from dataclasses import replace

import pytest

from ilora_export.artifacts.contract import (
    EMBEDS_ATOL,
    LOGITS_ATOL,
    GraphContract,
    ModelShape,
    TensorSpec,
    decoder_contract,
    encoder_contract,
    past_names,
)
from ilora_export.artifacts.manifest import read_manifest
from ilora_export.errors import ExportError

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[test])")

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "int64": "tensor(int64)"}


def _shape(num_layers: int = 3, r: int = 4) -> ModelShape:
    """A small Llama-like shape: hidden 24, 2 kv heads of 6, 5 experts; bank keys in a shuffled order."""
    outs = {"q_proj": 24, "k_proj": 12, "v_proj": 12, "o_proj": 24, "gate_proj": 40, "up_proj": 40, "down_proj": 24}
    ins = {p: (40 if p == "down_proj" else 24) for p in PROJECTIONS}
    bank = {}
    for p in reversed(PROJECTIONS):  # neither alphabetical nor A-before-B: the contract must order them
        bank[f"lora_B.{p}"] = [num_layers, r, outs[p]]
        bank[f"lora_A.{p}"] = [num_layers, ins[p], r]
    return ModelShape(
        hidden_size=24,
        num_layers=num_layers,
        num_kv_heads=2,
        head_dim=6,
        vocab_size=101,
        num_experts=5,
        bank_shapes=bank,
    )


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("bake", [False, True])
def test_contracts_round_trip_through_json(dtype, bake):
    shape = _shape()
    for contract in (decoder_contract(shape, dtype, bake_experts=bake), encoder_contract(shape)):
        again = GraphContract.from_dict(json.loads(json.dumps(contract.to_dict())))
        assert again == contract
        assert all(isinstance(t.axes, tuple) for t in again.inputs + again.outputs)
    assert ModelShape.from_dict(json.loads(json.dumps(shape.to_dict()))) == shape
    spec = TensorSpec("x", "int64", ("batch", 3))
    assert spec.to_dict() == {"name": "x", "dtype": "int64", "axes": ["batch", 3]}
    assert TensorSpec.from_dict(spec.to_dict()) == spec


def test_a_contract_without_tolerance_reads_as_empty():
    d = encoder_contract(_shape()).to_dict()
    del d["tolerance"]
    assert GraphContract.from_dict(d).tolerance == {}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_declared_decoder_inputs_bank_vs_baked(dtype):
    shape = _shape(num_layers=3, r=4)
    bank = decoder_contract(shape, dtype, bake_experts=False)
    baked = decoder_contract(shape, dtype, bake_experts=True)
    past = [f"past_key_values.{i}.{kv}" for i in range(3) for kv in ("key", "value")]
    assert past_names(3) == past
    assert baked.input_names == ["inputs_embeds", "cache_position", "row_start", "gate_weights", *past]
    # the bank follows, by projection name, each projection's A before its B
    order = [f"bank.{ab}.{p}" for p in sorted(PROJECTIONS) for ab in ("lora_A", "lora_B")]
    assert bank.input_names == baked.input_names + order
    for name in order:
        assert bank.input(name).axes == tuple(shape.bank_shapes[name.removeprefix("bank.")])
        assert bank.input(name).dtype == dtype
    assert bank.outputs == baked.outputs
    assert bank.output_names == ["logits", *[f"present.{i}.{kv}" for i in range(3) for kv in ("key", "value")]]
    assert baked.input("inputs_embeds").axes == ("batch", "sequence", 24)
    assert baked.input("gate_weights").axes == ("batch", 5)
    assert baked.input("past_key_values.2.value").axes == ("batch", 2, "capacity", 6)
    assert baked.input("cache_position").axes == ("sequence",) and baked.input("row_start").axes == ("batch",)
    assert bank.outputs[0] == TensorSpec("logits", "float32", ("batch", 1, 101))  # fp32 whatever the dtype
    assert bank.outputs[1].axes == ("batch", 2, "capacity", 6)  # the present is the past's own shape
    floats = [t for t in bank.inputs + bank.outputs[1:] if t.name not in ("cache_position", "row_start")]
    assert {t.dtype for t in floats} == {dtype}
    assert bank.input("cache_position").dtype == bank.input("row_start").dtype == "int64"
    assert bank.tolerance == baked.tolerance == {"logits": LOGITS_ATOL[dtype]}


def test_encoder_contract_is_fp32_whatever_the_decoder():
    enc = encoder_contract(_shape())
    assert enc.input_names == ["seq", "len_seq", "items"] and {t.dtype for t in enc.inputs} == {"int64"}
    assert enc.output_names == ["gate_weights", "item_embeds", "item_scores"]
    assert {t.dtype for t in enc.outputs} == {"float32"}
    assert enc.outputs[1].axes == ("batch", "items", 24)
    assert enc.tolerance == {n: EMBEDS_ATOL["float32"] for n in enc.output_names}


@pytest.fixture(scope="module")
def export_info(tiny_export):
    return read_manifest(tiny_export[1])


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def sessions(export_info):
    return {
        "decoder": _session(export_info.path / "decoder.onnx"),
        "encoder": _session(export_info.path / "encoder.onnx"),
    }


@pytest.mark.parametrize("graph", ["decoder", "encoder"])
def test_the_session_of_an_export_exposes_its_contract(export_info, sessions, graph):
    contract, session = getattr(export_info, graph), sessions[graph]
    assert contract.file == f"{graph}.onnx"
    for declared, actual in ((contract.inputs, session.get_inputs()), (contract.outputs, session.get_outputs())):
        assert [a.name for a in actual] == [t.name for t in declared]
        for t, a in zip(declared, actual):
            assert a.type == ORT_TYPES[t.dtype], t.name
            assert len(a.shape) == len(t.axes), t.name
            for axis, size in zip(t.axes, a.shape):
                if isinstance(axis, int):
                    assert size == axis, t.name
    contract.check_session(session)  # and the check itself agrees


def test_the_manifest_contract_is_the_one_the_shape_declares(export_info):
    shape = export_info.shape
    assert export_info.decoder == decoder_contract(shape, export_info.dtype, bake_experts=False)
    assert export_info.encoder == encoder_contract(shape)


def test_a_folded_session_exposes_the_baked_contract(tiny_export, export_info):
    from ilora_export.runtime.load import load_export
    from ilora_export.runtime.ort_backend import OrtBackend

    baked = decoder_contract(export_info.shape, export_info.dtype, bake_experts=True)
    for mode in ("fused", "folded"):
        session = OrtBackend(load_export(tiny_export[1]), bank_mode=mode, threads=1).decoder
        assert [a.name for a in session.get_inputs()] == baked.input_names
        baked.check_session(session)


def _with_input(contract: GraphContract, name: str, **change) -> GraphContract:
    inputs = tuple(replace(t, **change) if t.name == name else t for t in contract.inputs)
    return replace(contract, inputs=inputs)


def test_check_session_refuses_a_graph_that_is_not_the_contract(export_info, sessions):
    decoder, session = export_info.decoder, sessions["decoder"]
    baked = decoder_contract(export_info.shape, export_info.dtype, bake_experts=True)
    with pytest.raises(
        ExportError,
        match=r"decoder.onnx: graph inputs differ from the contract "
        r"\(missing \[\], unexpected \['bank.lora_A.down_proj', ",
    ) as err:
        baked.check_session(session)
    assert "export again" in err.value.hint
    renamed = replace(decoder, outputs=(replace(decoder.outputs[0], name="scores"), *decoder.outputs[1:]))
    with pytest.raises(ExportError, match=r"graph outputs differ .*missing \['scores'\], unexpected \['logits'\]"):
        renamed.check_session(session)
    with pytest.raises(ExportError, match="decoder.onnx: input inputs_embeds is float32, the contract says float16"):
        _with_input(decoder, "inputs_embeds", dtype="float16").check_session(session)
    with pytest.raises(
        ExportError,
        match=r"decoder.onnx: input gate_weights has shape \['batch', 4\], "
        r"the contract says \['batch', 5\]",
    ):
        _with_input(decoder, "gate_weights", axes=("batch", 5)).check_session(session)
    with pytest.raises(
        ExportError,
        match=r"input row_start has shape \['batch'\], the contract says \['batch', 1\]",
    ):
        _with_input(decoder, "row_start", axes=("batch", 1)).check_session(session)
    reordered = replace(decoder, inputs=tuple(reversed(decoder.inputs)))
    with pytest.raises(ExportError, match=r"inputs come in another order than the contract's: "):
        reordered.check_session(session)
    # a dynamic axis the graph happens to fix is not a mismatch (the encoder's history is fixed there)
    encoder = export_info.encoder
    assert encoder.input("seq").axes == ("batch", "history")
    encoder.check_session(sessions["encoder"])
