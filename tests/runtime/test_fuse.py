"""Folding the expert bank into the decoder and fusing the adapters into their base projections."""

import collections

import numpy as np
import pytest

from ilora_export.artifacts.bank import as_graph_inputs, is_bank_input
from ilora_export.artifacts.manifest import BANK, read_bank
from ilora_export.runtime.generator import Decoding, StepInputs
from ilora_export.runtime.load import load_export

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e .[test])")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[test])")


def _graph_and_bank(export_dir):
    from ilora_export.runtime.fuse import fold_bank

    info = load_export(export_dir).info
    bank = as_graph_inputs(read_bank(info.path / BANK, info))
    return onnx.load(str(info.path / "decoder.onnx"), load_external_data=False), bank, info, fold_bank


def test_every_projection_is_fused_and_the_bank_becomes_constant(tiny_export):
    _, export = tiny_export
    model, bank, info, fold_bank = _graph_and_bank(export)
    before = collections.Counter(n.op_type for n in model.graph.node)
    assert set(bank) == {i.name for i in model.graph.input if is_bank_input(i.name)}  # the file feeds every input
    fused, count = fold_bank(model, bank)
    after = collections.Counter(n.op_type for n in fused.graph.node)
    layers, groups = info.shape.num_layers, 4  # q/k/v, o, gate/up, down
    assert count == 7 * layers
    assert not any(is_bank_input(i.name) for i in fused.graph.input)
    # per projection: its base MatMul plus the adapter's two MatMuls, two Muls and Add ...
    # ... become per group one MatMul (A), one Mul (gate), one Concat, and the projection's own MatMul
    assert before["MatMul"] - after["MatMul"] == 7 * layers * 2 - groups * layers
    assert after["Add"] == before["Add"] - 7 * layers


def test_unfused_fold_only_turns_the_bank_into_initializers(tiny_export):
    _, export = tiny_export
    model, bank, _, fold_bank = _graph_and_bank(export)
    nodes = len(model.graph.node)
    folded, count = fold_bank(model, bank, fuse=False)
    assert count == 0 and len(folded.graph.node) == nodes
    assert set(bank) <= {i.name for i in folded.graph.initializer}


def test_fused_sessions_match_the_unfused_graph(tiny_export):
    from ilora_export.runtime.ort_backend import OrtBackend

    _, export_dir = tiny_export
    export = load_export(export_dir)
    k = export.info.shape.num_experts
    rng = np.random.default_rng(1)
    gate = rng.dirichlet(np.ones(k), size=2).astype(np.float32)  # a different mixture per row
    ids = rng.integers(1, 200, size=(2, 9))
    mask = np.ones_like(ids)
    mask[1, :4] = 0  # left padding

    def run(mode):
        be = OrtBackend(export, threads=1, bank_mode=mode)
        decoding = Decoding(be)
        inputs = StepInputs.prefill(be.embed(ids), mask, gate)
        steps = [decoding.step(inputs)]
        for _ in range(2):  # decode on the model's own greedy tokens
            inputs = decoding.next_inputs(inputs, steps[-1].argmax(-1))
            steps.append(decoding.step(inputs))
        return steps

    plain = run("folded")  # no load-time fusion at all
    for mode in ("fused", "input"):
        for a, b in zip(run(mode), plain):
            assert np.abs(a - b).max() <= 1e-4
            assert (a.argmax(-1) == b.argmax(-1)).all()


def test_every_rmsnorm_becomes_one_node(tiny_export):
    from ilora_export.runtime.fuse import fuse_rmsnorm

    _, export = tiny_export
    model, _, info, _ = _graph_and_bank(export)
    before = collections.Counter(n.op_type for n in model.graph.node)
    fused, count = fuse_rmsnorm(model)
    after = collections.Counter(n.op_type for n in fused.graph.node)
    norms = 2 * info.shape.num_layers + 1  # two per layer and the final one
    assert count == after["SimplifiedLayerNormalization"] == norms
    for op in ("Pow", "ReduceMean", "Sqrt", "Reciprocal"):
        assert before[op] - after[op] == norms


def test_rotary_becomes_one_node_per_query_and_key(tiny_export):
    from ilora_export.runtime.fuse import fuse_rotary

    _, export = tiny_export
    model, _, info, _ = _graph_and_bank(export)
    before = collections.Counter(n.op_type for n in model.graph.node)
    fused, count = fuse_rotary(model)
    after = collections.Counter(n.op_type for n in fused.graph.node)
    assert count == 2 * info.shape.num_layers  # q and k of every layer
    assert after["RotaryEmbedding"] == count and after["Neg"] == before["Neg"] - count
    assert after["Cos"] == after["Sin"] == 1  # one table per call, [C, d/2], not per token
    # the sessions with every fusion answer as the unfused graph: test_fused_sessions_match_the_unfused_graph


def test_rotary_fusion_leaves_another_rotary_variant_alone(tiny_export):
    """A scaled cos/sin (another rope variant) does not match: nothing is rewritten."""
    from onnx import helper

    from ilora_export.runtime.fuse import fuse_rotary

    _, export = tiny_export
    model, _, _, _ = _graph_and_bank(export)
    cos = next(n for n in model.graph.node if n.op_type == "Cos")
    scaled = helper.make_node("Mul", [cos.output[0], "ilora_test_scale"], ["ilora_test_scaled"])
    model.graph.initializer.append(helper.make_tensor("ilora_test_scale", 1, [], [0.5]))
    for node in model.graph.node:
        node.input[:] = ["ilora_test_scaled" if i == cos.output[0] else i for i in node.input]
    model.graph.node.append(scaled)
    _, count = fuse_rotary(model)
    assert count == 0


def test_attention_becomes_one_group_query_attention_per_layer(tiny_export):
    """After the rotary fusion, each layer's cache write, scores, mask, softmax and weighted sum become one
    GroupQueryAttention writing the present (the session's answers: test_fused_sessions_match_the_unfused_graph
    and tests/runtime/test_backends.py, which run with every fusion)."""
    from ilora_export.runtime.fuse import fuse_attention, fuse_rotary

    _, export = tiny_export
    model, _, info, _ = _graph_and_bank(export)
    layers = info.shape.num_layers
    assert fuse_attention(model)[1] == 0  # without the rotary fusion's tables: left as exported
    model, _ = fuse_rotary(model)
    fused, count = fuse_attention(model)
    ops = collections.Counter(n.op_type for n in fused.graph.node)
    assert count == layers and ops["GroupQueryAttention"] == layers
    assert ops["ScatterND"] == ops["Softmax"] == 0  # the exported attention is gone, not left beside
    assert ops["RotaryEmbedding"] == 2 * layers  # now on the projections' [B, S, heads * d] outputs
    producers = {o: n.op_type for n in fused.graph.node for o in n.output}
    assert {producers[o.name] for o in fused.graph.output if o.name.startswith("present.")} == {"GroupQueryAttention"}
