"""The expert bank's layout: names, shapes and orientation, and a tiny model's bank, decoder contract,
exported graph and bank file all following it."""

import subprocess
import sys

import numpy as np
import pytest

from ilora_export.artifacts.bank import (
    LORA_A,
    LORA_B,
    BankShape,
    expert_rank,
    factor_of_input,
    file_metadata,
    from_stored,
    graph_input_shapes,
    input_name,
    is_bank_key,
    key_of_input,
    layer_shape,
    lora_scaling,
    parse_bank_key,
    rank_of,
    stored_rank,
    stored_shape,
    to_stored,
)

# a tiny Llama's projections: hidden 64, 2 kv heads of 16, intermediate 128
TINY_FEATURES = {
    "q_proj": (64, 64),
    "k_proj": (64, 32),
    "v_proj": (64, 32),
    "o_proj": (64, 64),
    "gate_proj": (64, 128),
    "up_proj": (64, 128),
    "down_proj": (128, 64),
}


def _tiny() -> BankShape:
    features = {p: TINY_FEATURES[p] for p in ("up_proj", "q_proj", "down_proj", "k_proj")}  # not in order
    return BankShape(num_layers=2, features=features, r=8, num_experts=4)


def test_names_and_shapes_of_a_tiny_bank():
    shape = _tiny()
    assert shape.keys == [
        "lora_A.down_proj",
        "lora_B.down_proj",
        "lora_A.k_proj",
        "lora_B.k_proj",
        "lora_A.q_proj",
        "lora_B.q_proj",
        "lora_A.up_proj",
        "lora_B.up_proj",
    ]
    assert shape.input_names == [f"bank.{k}" for k in shape.keys]
    assert shape.shapes == {
        "lora_A.down_proj": [2, 128, 8],
        "lora_B.down_proj": [2, 8, 64],  # A^T, B^T per layer
        "lora_A.k_proj": [2, 64, 8],
        "lora_B.k_proj": [2, 8, 32],
        "lora_A.q_proj": [2, 64, 8],
        "lora_B.q_proj": [2, 8, 64],
        "lora_A.up_proj": [2, 64, 8],
        "lora_B.up_proj": [2, 8, 128],
    }
    assert list(shape.shapes) == shape.keys
    assert {rank_of(k, dims) for k, dims in shape.shapes.items()} == {8}
    assert shape.expert_rank == 2 and shape.scaling(16.0) == 8.0  # alpha / (r / K)
    # graph inputs in the layout's order whatever the order of the shapes given
    shuffled = dict(reversed(shape.shapes.items()))
    assert graph_input_shapes(shuffled) == [(f"bank.{k}", shape.shapes[k]) for k in shape.keys]


def test_names_parse_back_and_other_names_are_refused():
    assert parse_bank_key("lora_B.v_proj") == (LORA_B, "v_proj")
    assert input_name("lora_A.q_proj") == "bank.lora_A.q_proj"
    assert key_of_input("bank.lora_A.q_proj") == "lora_A.q_proj"
    assert factor_of_input("bank.lora_B.down_proj") == LORA_B and factor_of_input("bank.lora_A.o_proj") == LORA_A
    for other in (
        "past_key_values.0.key",
        "gate_weights",
        "lora_A.q_proj",
        "bank.",
        "bank.lora_C.q_proj",
        "bank.lora_A",
    ):
        assert key_of_input(other) is None and factor_of_input(other) is None
    for bad in ("lora_C.q_proj", "lora_A", "lora_A.", "q_proj", ""):
        assert not is_bank_key(bad)
        with pytest.raises(ValueError, match="lora_A.<projection> or lora_B.<projection>"):
            parse_bank_key(bad)
        with pytest.raises(ValueError):
            input_name(bad)


def test_stored_orientation_is_each_layer_weight_transposed():
    rng = np.random.default_rng(0)
    in_f, out_f, r, layers = 6, 5, 4, 3
    a = rng.standard_normal((layers, *layer_shape(LORA_A, in_f, out_f, r)))  # [L, r, in]
    b = rng.standard_normal((layers, *layer_shape(LORA_B, in_f, out_f, r)))  # [L, out, r]
    assert a.shape == (layers, r, in_f) and b.shape == (layers, out_f, r)
    for factor, w in ((LORA_A, a), (LORA_B, b)):
        stored = to_stored(w)
        assert list(stored.shape) == stored_shape(factor, layers, in_f, out_f, r)
        np.testing.assert_array_equal(stored[1], w[1].T)
        np.testing.assert_array_equal(from_stored(stored), w)
        assert stored_rank(factor, stored.shape) == stored_rank(factor, stored[0].shape) == r


def test_expert_rank_scaling_and_file_metadata():
    assert expert_rank(8, 4) == 2 and expert_rank(8, 1) == 8
    with pytest.raises(ValueError, match="divisible"):
        expert_rank(6, 4)
    assert lora_scaling(32.0, 8, 4) == 16.0 and lora_scaling(32.0, 8, 1) == 4.0
    assert file_metadata(4, 8, 2) == {"num_experts": "4", "r": "8", "num_layers": "2"}


def test_the_layout_needs_no_torch():
    code = "import sys, ilora_export.artifacts.bank; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def _expected_shape(model) -> BankShape:
    return BankShape(num_layers=2, features=TINY_FEATURES, r=model.spec.r, num_experts=model.spec.num_experts)


def test_a_tiny_models_bank_and_contract_follow_the_layout(tiny_llama_dir):
    from ilora_export.artifacts.bank import parameter_name
    from ilora_export.artifacts.contract import decoder_contract
    from ilora_export.export.decoder import graph_bank, model_shape
    from ilora_export.model.moe_lora import DEFAULT_ADAPTER, BankLayout, moe_lora_layers
    from tests.factories import make_tiny_ilora

    model = make_tiny_ilora(tiny_llama_dir)
    want = _expected_shape(model)
    layout = BankLayout(model.llm)
    assert layout.shape == want and layout.keys == want.keys
    stored = graph_bank(model)
    assert list(stored) == want.keys
    assert {k: list(v.shape) for k, v in stored.items()} == want.shapes
    # every layer's factor is the model parameter the layout names, of the layout's shape, stored transposed
    for name, layer in moe_lora_layers(model.llm).items():
        projection = name.rsplit(".", 1)[-1]
        index = layout.modules[projection].index(name)
        assert layer.scaling == want.scaling(model.spec.alpha)
        for factor in (LORA_A, LORA_B):
            weight = model.llm.get_parameter(parameter_name(name, factor, DEFAULT_ADAPTER))
            assert list(weight.shape) == layer_shape(factor, *TINY_FEATURES[projection], want.r)
            assert (stored[f"{factor}.{projection}"][index] == to_stored(weight)).all()
    params = dict(model.llm.named_parameters())
    back = layout.parameters_from_stored(stored)
    assert len(back) == 2 * len(moe_lora_layers(model.llm))
    assert all((params[n] == t).all() for n, t in back.items())
    # the sizes the export records and the decoder contract built from them
    shape = model_shape(model)
    assert shape.bank_shapes == want.shapes
    contract = decoder_contract(shape, "float32", bake_experts=False)
    assert [(t.name, list(t.axes)) for t in contract.inputs if key_of_input(t.name)] == list(
        zip(want.input_names, want.shapes.values())
    )
    assert contract.input_names[-len(want.keys) :] == want.input_names  # the bank comes last
    assert not any(key_of_input(t.name) for t in decoder_contract(shape, "float32", bake_experts=True).inputs)


def test_an_exported_graph_and_bank_file_follow_the_layout(tiny_export):
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e .[test])")
    from safetensors import safe_open

    from ilora_export.artifacts.manifest import BANK, read_manifest
    from ilora_export.checkpoint import load_checkpoint
    from ilora_export.export.decoder import graph_bank

    ckpt, export = tiny_export
    model = load_checkpoint(ckpt).model.float().eval()
    want = _expected_shape(model)
    info = read_manifest(export)
    graph = onnx.load(str(export / info.decoder.file), load_external_data=False).graph
    inputs = [(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim]) for i in graph.input]
    assert [i for i in inputs if key_of_input(i[0])] == list(zip(want.input_names, want.shapes.values()))
    assert [i[0] for i in inputs][-len(want.keys) :] == want.input_names  # the bank comes last
    assert info.shape.bank_shapes == want.shapes
    stored = graph_bank(model)
    with safe_open(str(export / BANK), framework="numpy") as f:
        assert sorted(f.keys()) == sorted(want.keys)
        assert f.metadata() == file_metadata(want.num_experts, want.r, want.num_layers)
        for key in want.keys:
            np.testing.assert_array_equal(f.get_tensor(key), stored[key].numpy())
