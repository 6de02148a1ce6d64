import numpy as np
import pytest
import torch

from ilora_export.artifacts.bank import is_bank_input
from ilora_export.export.decoder import DecoderWrapper, export_decoder, sample_inputs
from ilora_export.model.ilora import positions_from_mask
from ilora_export.model.moe_lora import BankLayout
from tests.factories import make_tiny_ilora

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[test])")


@pytest.fixture(scope="module", params=[False, True], ids=["bank-input", "baked"])
def exported(request, tiny_llama_dir, tmp_path_factory):
    model = make_tiny_ilora(tiny_llama_dir)
    path = tmp_path_factory.mktemp("onnx") / "decoder.onnx"
    contract = export_decoder(model, path, bake_experts=request.param)
    wrapper = DecoderWrapper(model, bake_experts=request.param).eval()
    return model, wrapper, contract, ort.InferenceSession(str(path))


def _run(session, contract, args):
    return session.run(None, {n: a.numpy() for n, a in zip(contract.input_names, args)})


def test_contract_names(exported):
    model, wrapper, c, session = exported
    assert [i.name for i in session.get_inputs()] == c.input_names
    assert [o.name for o in session.get_outputs()] == c.output_names
    banks = [n for n in c.input_names if is_bank_input(n)]
    if wrapper.bake_experts:
        assert banks == []
    else:  # the contract's bank order is the layout's, which the wrapper zips the inputs with
        assert banks == BankLayout(model.llm).shape.input_names and len(banks) == 14
        assert banks[:2] == ["bank.lora_A.down_proj", "bank.lora_B.down_proj"]
    assert session.get_outputs()[0].type == "tensor(float)" and session.get_outputs()[0].shape[1:] == [
        1,
        model.llm.config.vocab_size,
    ]


@pytest.mark.parametrize("rows", [1, 3], ids=["batch-1", "left-padded-batch"])
def test_prefill_then_decode_match_pytorch(exported, rows):
    """Prefill (past 0) and two decode steps (past > 0) on a preallocated cache equal one plain PyTorch
    forward over the whole sequence, row by row, with prompts of three lengths in one batch."""
    model, wrapper, c, session = exported
    cfg = model.llm.config
    kv, hd = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    prompt = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]])[:rows]  # left-padded
    mask = torch.cat([prompt, torch.ones(rows, 2, dtype=torch.long)], 1)  # [B, 8]: the prompt, then 2 tokens
    embeds = torch.randn(rows, 8, cfg.hidden_size)
    gate = torch.softmax(torch.randn(rows, 4), -1)
    with torch.no_grad(), model.expert_gate.use(gate):  # reference: no cache at all
        plain = model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions_from_mask(mask)).logits
    start = 6 - prompt.sum(1)  # [B] each row's left padding
    capacity = 11  # more columns than the 8 written: the rest must stay masked and untouched
    cache = [torch.zeros(rows, kv, capacity, hd) for _ in range(2 * cfg.num_hidden_layers)]
    columns = [torch.arange(6), torch.tensor([6]), torch.tensor([7])]
    for step, cols in enumerate(columns):
        args = (embeds[:, cols], cols, start, gate, *cache, *wrapper.bank_inputs())
        with torch.no_grad():
            ref = wrapper(*args)
        got = _run(session, c, args)
        last = int(cols[-1])
        torch.testing.assert_close(ref[0][:, -1], plain[:, last], rtol=1e-5, atol=1e-5)
        assert np.abs(got[0][:, -1] - plain[:, last].numpy()).max() <= 1e-4, step
        assert (got[0].argmax(-1) == ref[0].numpy().argmax(-1)).all()
        for g, r in zip(got[1:], ref[1:]):
            assert g.shape == (rows, kv, capacity, hd)
            assert np.abs(g - r.numpy()).max() <= 1e-4
            assert not g[:, :, last + 1 :].any()  # columns beyond this call's are not written
        cache = [torch.from_numpy(p) for p in got[1:]]


def test_cache_inputs_are_only_scattered_into(exported):
    """Each past tensor is read by one ScatterND (and at most a Shape) whose output is the present itself:
    what makes binding past and present to one buffer (an in-place update) equal to the graph's meaning."""
    import onnx

    _, _, c, session = exported
    graph = onnx.load(session._model_path, load_external_data=False).graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producer = {out: node for node in graph.node for out in node.output}
    for name in [n for n in c.input_names if n.startswith("past_key_values.")]:
        reads = [n for n in consumers[name] if n.op_type != "Shape"]
        assert [n.op_type for n in reads] == ["ScatterND"], name
        present = name.replace("past_key_values.", "present.")
        assert producer[present] is reads[0], name
    assert "Concat" not in {producer[n].op_type for n in c.output_names}


def test_another_expert_bank_changes_ort_exactly_as_pytorch(exported):
    _, wrapper, c, session = exported
    if wrapper.bake_experts:
        pytest.skip("the baked graph has no bank input")
    args = sample_inputs(wrapper)
    n = len(args) - len(wrapper.bank_inputs())
    other = args[:n] + tuple(b * 1.5 + 0.01 for b in args[n:])
    with torch.no_grad():
        ref, ref_other = wrapper(*args)[0], wrapper(*other)[0]
    got, got_other = _run(session, c, args)[0], _run(session, c, other)[0]
    assert (ref_other - ref).abs().max() > 1e-3  # the bank matters
    assert np.abs(got_other - ref_other.numpy()).max() <= 1e-4
    assert np.abs(got - ref.numpy()).max() <= 1e-4


def test_fp16_graph_keeps_softmax_norm_and_logits_in_fp32(tiny_llama_dir, tmp_path):
    import onnx

    model = make_tiny_ilora(tiny_llama_dir)
    model.llm.half()
    export_decoder(model, tmp_path / "decoder.onnx")
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / "decoder.onnx"))).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    fp32, fp16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert types["inputs_embeds"] == fp16 and types["past_key_values.0.key"] == fp16 and types["logits"] == fp32
    softmax_in = [types[n.input[0]] for n in graph.node if n.op_type == "Softmax"]
    assert softmax_in and set(softmax_in) == {fp32}  # attention probabilities in fp32
    # RMSNorm: the mean of squares runs in fp32 (one per norm: 2 per layer + the final one)
    reduce_in = [types[n.input[0]] for n in graph.node if n.op_type == "ReduceMean"]
    assert len(reduce_in) == 2 * model.llm.config.num_hidden_layers + 1 and set(reduce_in) == {fp32}
    matmul_out = [types[n.output[0]] for n in graph.node if n.op_type == "MatMul"]
    assert fp16 in matmul_out  # the projections do run in fp16


def _ops_between(graph, start: str, stop_op: str) -> set[str]:
    """Op types on every path from tensor ``start`` forward to the first ``stop_op`` node of each path."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    seen, ops, todo = set(), set(), [start]
    while todo:
        for node in consumers.get(todo.pop(), []):
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type != stop_op:
                ops.add(node.op_type)
                todo.extend(node.output)
    return ops


def test_grouped_attention_reads_each_kv_head_once(tiny_llama_dir, tmp_path):
    """K and V reach the attention MatMuls without being repeated for the query heads (no Expand)."""
    import onnx

    model = make_tiny_ilora(tiny_llama_dir)
    cfg = model.llm.config
    assert cfg.num_attention_heads > cfg.num_key_value_heads  # the tiny model does use grouped heads
    contract = export_decoder(model, tmp_path / "decoder.onnx")
    graph = onnx.load(str(tmp_path / "decoder.onnx")).graph
    presents = [n for n in contract.output_names if n.startswith("present.")]
    assert len(presents) == 2 * cfg.num_hidden_layers
    for name in presents:
        assert "Expand" not in _ops_between(graph, name, "MatMul"), name


def test_grouped_attention_equals_attention_over_repeated_heads():
    from ilora_export.export.attention import fp32_softmax_attention

    gen = torch.Generator().manual_seed(0)
    b, kv, groups, s, t, d = 2, 3, 4, 5, 7, 8
    query = torch.randn(b, kv * groups, s, d, generator=gen)
    key, value = torch.randn(b, kv, t, d, generator=gen), torch.randn(b, kv, t, d, generator=gen)
    mask = torch.zeros(b, 1, s, t)
    mask[0, :, :, :2] = torch.finfo(torch.float32).min  # row 0 left-padded by two positions
    module = torch.nn.Module()
    out, probs = fp32_softmax_attention(module, query, key, value, mask, scaling=d**-0.5)
    # reference: every KV head repeated for its query heads (head j reads KV head j // groups)
    k = key.repeat_interleave(groups, dim=1)  # [B, h, T, d]
    v = value.repeat_interleave(groups, dim=1)
    ref_probs = torch.softmax(query @ k.transpose(2, 3) * d**-0.5 + mask, dim=-1)  # [B, h, S, T]
    ref = (ref_probs @ v).transpose(1, 2)  # [B, S, h, d]
    torch.testing.assert_close(probs, ref_probs)
    torch.testing.assert_close(out, ref)
    assert probs[0, :, :, :2].abs().max() == 0  # the padding gets no weight
