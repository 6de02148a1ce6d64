"""Item projector: official names and the Linear-GELU-Linear function."""

from __future__ import annotations

import math

import torch

from ilora_export.model.projector import ItemProjector


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def test_official_names_and_shapes():
    proj = ItemProjector(64, 96)
    assert {k: tuple(v.shape) for k, v in proj.state_dict().items()} == {
        "mlp_proj.0.weight": (96, 64),
        "mlp_proj.0.bias": (96,),
        "mlp_proj.2.weight": (96, 96),
        "mlp_proj.2.bias": (96,),
    }
    assert tuple(ItemProjector(64, 96, hidden=32).mlp_proj[0].weight.shape) == (32, 64)
    assert tuple(ItemProjector(64, 96, hidden=32).mlp_proj[2].weight.shape) == (96, 32)


def test_function_over_any_leading_shape():
    torch.manual_seed(0)
    proj = ItemProjector(8, 12, hidden=10)
    x = torch.randn(2, 3, 8)
    w0, b0 = proj.mlp_proj[0].weight, proj.mlp_proj[0].bias
    w2, b2 = proj.mlp_proj[2].weight, proj.mlp_proj[2].bias
    expected = _gelu(x @ w0.T + b0) @ w2.T + b2
    out = proj(x)
    assert out.shape == (2, 3, 12)
    torch.testing.assert_close(out, expected)
