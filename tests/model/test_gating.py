"""Gates: weights per sequence that sum to 1; the ResNet gate against a functional transcription."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ilora_export.errors import IloraError
from ilora_export.model.gating import DenseGate, ResNetGate, build_gate


def official_router_keys(num_experts: int) -> dict[str, tuple]:
    """Parameter/buffer names and shapes of the official NLPRecommendationRouter (blocks 3/3/3)."""
    keys: dict[str, tuple] = {"conv1.weight": (16, 1, 3)}

    def bn(prefix, c):
        keys.update(
            {
                f"{prefix}.weight": (c,),
                f"{prefix}.bias": (c,),
                f"{prefix}.running_mean": (c,),
                f"{prefix}.running_var": (c,),
                f"{prefix}.num_batches_tracked": (),
            }
        )

    bn("bn1", 16)
    cin = 16
    for stage, cout in zip((1, 2, 3), (16, 32, 64)):
        for block in range(3):
            p = f"layer{stage}.{block}"
            keys[f"{p}.conv1.weight"] = (cout, cin, 3)
            bn(f"{p}.bn1", cout)
            keys[f"{p}.conv2.weight"] = (cout, cout, 3)
            bn(f"{p}.bn2", cout)
            cin = cout
    keys["gate.fc.weight"] = (num_experts, 64)
    keys["gate.fc.bias"] = (num_experts,)
    return keys


def reference_resnet_gate(sd: dict, x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The official router in eval mode, written with functional ops: [B, d] -> [B, K]."""

    def bn(t, p):
        return F.batch_norm(
            t,
            sd[p + ".running_mean"],
            sd[p + ".running_var"],
            sd[p + ".weight"],
            sd[p + ".bias"],
            training=False,
            eps=eps,
        )

    out = F.relu(bn(F.conv1d(x.unsqueeze(1), sd["conv1.weight"], padding=1), "bn1"))
    for stage, stride in zip((1, 2, 3), (1, 2, 2)):
        for block in range(3):
            p = f"layer{stage}.{block}"
            s = stride if block == 0 else 1
            y = F.relu(bn(F.conv1d(out, sd[p + ".conv1.weight"], stride=s, padding=1), p + ".bn1"))
            y = bn(F.conv1d(y, sd[p + ".conv2.weight"], padding=1), p + ".bn2")
            cin, cout = out.shape[1], y.shape[1]
            if s != 1 or cin != cout:  # option A: every second position, zero channels around
                diff = cout - cin
                short = F.pad(out[:, :, ::2], (0, 0, int(diff * 0.5), int((diff + 1) * 0.5)))
            else:
                short = out
            out = F.relu(y + short)
    pooled = out.mean(-1)  # [B, 64]
    return torch.softmax(pooled @ sd["gate.fc.weight"].T + sd["gate.fc.bias"], dim=-1)


def _randomise(gate: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in gate.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.is_floating_point():
                t.add_(0.2 * torch.randn(t.shape, generator=g))


@pytest.mark.parametrize("kind", ["dense", "resnet"])
@pytest.mark.parametrize("batch", [1, 5])
def test_weights_sum_to_one(kind, batch):
    gate = build_gate(kind, 64, 4).eval()
    with torch.no_grad():
        w = gate(torch.randn(batch, 64))
    assert w.shape == (batch, 4)
    assert (w > 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(batch))


def test_dense_gate_is_linear_softmax():
    gate = DenseGate(8, 3)
    x = torch.randn(4, 8)
    logits = x @ gate.fc.weight.T + gate.fc.bias
    expected = logits.exp() / logits.exp().sum(-1, keepdim=True)
    torch.testing.assert_close(gate(x), expected)


def test_resnet_gate_has_the_official_router_names_and_shapes():
    gate = ResNetGate(64, 4)
    got = {k: tuple(v.shape) for k, v in gate.state_dict().items()}
    assert got == official_router_keys(4)


@pytest.mark.parametrize("d_rec", [64, 63, 16])
def test_resnet_gate_matches_functional_transcription(d_rec):
    gate = ResNetGate(d_rec, 4)
    _randomise(gate)
    gate.eval()
    x = torch.randn(6, d_rec)
    with torch.no_grad():
        torch.testing.assert_close(gate(x), reference_resnet_gate(gate.state_dict(), x))
        torch.testing.assert_close(gate(x.unsqueeze(1)), gate(x))  # [B, 1, d] like the official input


def test_fresh_resnet_gate_uses_unit_batchnorm_statistics():
    # Official checkpoints lack running statistics; a fresh gate must stand for mean 0 / var 1.
    gate = ResNetGate(64, 4).eval()
    for name, t in gate.state_dict().items():
        if name.endswith("running_mean"):
            assert torch.equal(t, torch.zeros_like(t))
        if name.endswith("running_var"):
            assert torch.equal(t, torch.ones_like(t))


@pytest.mark.parametrize("kind", ["dense", "resnet"])
def test_gradient_reaches_every_parameter(kind):
    torch.manual_seed(0)
    gate = build_gate(kind, 64, 4).train()
    x = torch.randn(1 if kind == "resnet" else 3, 64, requires_grad=True)
    target = torch.tensor([0.7, 0.1, 0.1, 0.1])
    loss = -(target * gate(x).log()).sum()
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in gate.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_gate_kinds_and_errors():
    assert isinstance(build_gate("dense", 16, 2), DenseGate)
    assert isinstance(build_gate("resnet", 16, 2), ResNetGate)
    assert build_gate("resnet", 16, 7)(torch.randn(2, 16)).shape == (2, 7)
    with pytest.raises(IloraError, match="moe"):
        build_gate("moe", 16, 2)
