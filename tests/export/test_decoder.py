import numpy as np
import pytest
import torch

from ilora_export.export.decoder import DecoderWrapper, export_decoder, sample_inputs
from ilora_export.model.ilora import positions_from_mask
from tests.factories import make_tiny_ilora

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[test])")


@pytest.fixture(scope="module")
def exported(tiny_llama_dir, tmp_path_factory):
    model = make_tiny_ilora(tiny_llama_dir)
    path = tmp_path_factory.mktemp("onnx") / "decoder.onnx"
    contract = export_decoder(model, path)
    return model, DecoderWrapper(model).eval(), contract, ort.InferenceSession(str(path))


def _run(session, contract, args):
    return session.run(None, {n: a.numpy() for n, a in zip(contract.input_names, args)})


def test_contract_names(exported):
    _, _, c, session = exported
    assert [i.name for i in session.get_inputs()] == c.input_names
    assert [o.name for o in session.get_outputs()] == c.output_names
    assert c.bank_names[:2] == ["bank.lora_A.down_proj", "bank.lora_B.down_proj"] and len(c.bank_names) == 14


def test_left_padded_prefill_then_decode_match_pytorch(exported):
    model, wrapper, c, session = exported
    cfg = model.llm.config
    kv, hd = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    bank = [wrapper.layout.stack(model.llm)[k] for k in c.bank_keys]
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]])
    embeds = torch.randn(3, 6, cfg.hidden_size)
    gate = torch.softmax(torch.randn(3, 4), -1)
    empty = [torch.zeros(3, kv, 0, hd) for _ in c.past_names]  # past length 0
    prefill = (embeds, mask, positions_from_mask(mask), gate, *empty, *bank)
    with torch.no_grad():
        ref = wrapper(*prefill)
        own = model.llm  # the wrapper is the model itself: compare with a plain forward
        with model.expert_gate.use(gate):
            plain = own(inputs_embeds=embeds, attention_mask=mask, position_ids=positions_from_mask(mask)).logits
    torch.testing.assert_close(ref[0][:, -1], plain[:, -1], rtol=1e-5, atol=1e-5)
    got = _run(session, c, prefill)
    assert np.abs(got[0] - ref[0].numpy()).max() <= 1e-4
    assert (got[0].argmax(-1) == ref[0].numpy().argmax(-1)).all()
    # one decode step on the presents (past > 0)
    step_mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)
    step = (torch.randn(3, 1, cfg.hidden_size), step_mask, positions_from_mask(step_mask)[:, -1:], gate,
            *[torch.from_numpy(p) for p in got[1:]], *bank)
    with torch.no_grad():
        ref_step = wrapper(*step)
    got_step = _run(session, c, step)
    assert np.abs(got_step[0] - ref_step[0].numpy()).max() <= 1e-4
    assert got_step[1].shape[2] == 7


def test_another_expert_bank_changes_ort_exactly_as_pytorch(exported):
    _, wrapper, c, session = exported
    args = sample_inputs(wrapper)
    n = 4 + len(c.past_names)
    other = args[:n] + tuple(b * 1.5 + 0.01 for b in args[n:])
    with torch.no_grad():
        ref, ref_other = wrapper(*args)[0], wrapper(*other)[0]
    got, got_other = _run(session, c, args)[0], _run(session, c, other)[0]
    assert (ref_other - ref).abs().max() > 1e-3  # the bank matters
    assert np.abs(got_other - ref_other.numpy()).max() <= 1e-4
    assert np.abs(got - ref.numpy()).max() <= 1e-4
