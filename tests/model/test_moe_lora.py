import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from ilora_export.model.moe_lora import (
    BankLayout,
    ExpertGate,
    MoELoraLinear,
    inject_moe_lora,
    moe_lora_layers,
)


def _layer(r=8, alpha=32.0, k=4, din=16, dout=12, seed=0):
    torch.manual_seed(seed)
    gate = ExpertGate(k)
    layer = MoELoraLinear(nn.Linear(din, dout), r=r, alpha=alpha, num_experts=k, dropout=0.0, gate=gate)
    nn.init.normal_(layer.lora_B["default"].weight)  # a trained-looking bank (B = 0 at init)
    return layer.eval(), gate


def test_gated_forward_equals_explicit_per_expert_sum():
    layer, gate = _layer()
    x = torch.randn(3, 5, 16)
    g = torch.softmax(torch.randn(3, 4), -1)
    A = layer.lora_A["default"].weight  # [r, in]
    B = layer.lora_B["default"].weight  # [out, r]
    W, bias = layer.base_layer.weight, layer.base_layer.bias
    scaling = 32.0 / (8 / 4)
    expected = torch.zeros(3, 5, 12)
    for b in range(3):
        acc = x[b] @ W.T + bias
        for k in range(4):
            A_k, B_k = A[2 * k : 2 * k + 2], B[:, 2 * k : 2 * k + 2]
            acc = acc + scaling * g[b, k] * (B_k @ (A_k @ x[b].T)).T
        expected[b] = acc
    with gate.use(g), torch.no_grad():
        got = layer(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_scaling_is_alpha_over_rank_per_expert():
    layer, _ = _layer(r=8, alpha=32, k=4)
    assert layer.scaling == 16.0
    layer1, _ = _layer(r=8, alpha=32, k=1)
    assert layer1.scaling == 4.0


def test_single_expert_with_unit_gate_is_plain_lora():
    layer, gate = _layer(k=1)
    x = torch.randn(2, 7, 16)
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    plain = layer.base_layer(x) + (x @ A.T @ B.T) * (32.0 / 8)
    with gate.use(torch.ones(2, 1)), torch.no_grad():
        got = layer(x)
    torch.testing.assert_close(got, plain, rtol=1e-6, atol=1e-6)
    # and bit-for-bit the peft-style op order
    peft = layer.base_layer(x) + layer.lora_B["default"](layer.lora_A["default"](x)) * layer.scaling
    with gate.use(torch.ones(2, 1)), torch.no_grad():
        assert torch.equal(layer(x), peft)


def test_each_sequence_gets_its_own_mixture():
    layer, gate = _layer()
    x = torch.randn(1, 4, 16).repeat(2, 1, 1)  # same input twice
    g = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]])
    with gate.use(g), torch.no_grad():
        y = layer(x)
    assert not torch.allclose(y[0], y[1])
    with gate.use(g[:1]), torch.no_grad():
        torch.testing.assert_close(layer(x[:1])[0], y[0])


def test_missing_gate_is_an_error_and_gate_shape_checked():
    layer, gate = _layer()
    with pytest.raises(RuntimeError, match="gate"):
        layer(torch.randn(1, 2, 16))
    with pytest.raises(ValueError):
        with gate.use(torch.ones(2, 3)):
            pass


def test_rank_must_split_into_experts():
    with pytest.raises(ValueError, match="divisible"):
        MoELoraLinear(nn.Linear(4, 4), r=6, alpha=1, num_experts=4, dropout=0, gate=ExpertGate(4))


def _tiny_llama():
    cfg = LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def test_injection_wraps_all_seven_projections_and_fresh_bank_is_identity():
    model = _tiny_llama()
    ids = torch.randint(0, 100, (2, 6))
    before = model(ids).logits
    gate = ExpertGate(4)
    names = inject_moe_lora(
        model,
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        r=8,
        alpha=32,
        num_experts=4,
        dropout=0.1,
        gate=gate,
    )
    assert len(names) == 2 * 7 and set(moe_lora_layers(model)) == set(names)
    keys = [k for k in model.state_dict() if "lora_" in k]
    assert "model.layers.0.self_attn.q_proj.lora_A.default.weight" in keys
    assert "model.layers.1.mlp.down_proj.lora_B.default.weight" in keys
    with gate.use(torch.softmax(torch.randn(2, 4), -1)), torch.no_grad():
        torch.testing.assert_close(model.eval()(ids).logits, before)


def test_injection_rejects_unknown_target():
    with pytest.raises(ValueError, match="c_attn"):
        inject_moe_lora(_tiny_llama(), ["q_proj", "c_attn"], r=4, alpha=8, num_experts=2, dropout=0, gate=ExpertGate(2))


def test_bank_layout_stores_transposed_stacks_and_maps_them_back():
    model = _tiny_llama()
    inject_moe_lora(model, ["q_proj", "down_proj"], r=8, alpha=32, num_experts=4, dropout=0, gate=ExpertGate(4))
    layout = BankLayout(model)
    assert layout.keys == ["lora_A.down_proj", "lora_B.down_proj", "lora_A.q_proj", "lora_B.q_proj"]
    assert layout.shape.shapes == {
        "lora_A.down_proj": [2, 128, 8],
        "lora_B.down_proj": [2, 8, 64],
        "lora_A.q_proj": [2, 64, 8],
        "lora_B.q_proj": [2, 8, 64],
    }
    stored = layout.stored(model)
    q1 = model.model.layers[1].self_attn.q_proj
    assert torch.equal(stored["lora_A.q_proj"][1], q1.lora_A["default"].weight.T)
    assert torch.equal(layout.stack(model)["lora_B.q_proj"][1], q1.lora_B["default"].weight)
    params = dict(model.named_parameters())
    back = layout.parameters_from_stored(stored)
    assert len(back) == 2 * 2 * 2 and all(torch.equal(params[n], t) for n, t in back.items())


def test_bank_layout_needs_every_projection_in_every_layer():
    model = _tiny_llama()
    inject_moe_lora(model, ["q_proj", "v_proj"], r=4, alpha=8, num_experts=2, dropout=0, gate=ExpertGate(2))
    attn = model.model.layers[1].self_attn
    attn.q_proj = attn.q_proj.base_layer  # layer 1 without its q_proj adapter
    with pytest.raises(ValueError, match="every projection"):
        _ = BankLayout(model).shape
