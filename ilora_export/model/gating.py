"""Gating networks: the SASRec user representation -> K expert weights per sequence.

``DenseGate`` is the paper's gate (Linear + softmax). ``ResNetGate`` is the official "share" router
(``model/router/nlpr.py`` of the official iLoRA code: ``NLPRecommendationRouter`` built by
``build_router()`` with ``ResidualBlock`` x [3, 3, 3]), with the same parameter names, so that the
``router.*`` entries of an official checkpoint load into it:

- ``conv1.weight`` (Conv1d 1->16, k3, no bias), ``bn1.*``;
- ``layer{1,2,3}.{0,1,2}.conv1.weight`` / ``bn1.*`` / ``conv2.weight`` / ``bn2.*`` (k3, no bias;
  16/32/64 channels, the first block of ``layer2``/``layer3`` with stride 2);
- ``gate.fc.weight`` [K, 64], ``gate.fc.bias`` [K].

Where a block changes shape, the official shortcut has no parameters (ResNet "option A"): it takes
every second position and zero-pads the new channels, half before and half after; we do the same
(not a 1x1 convolution), which keeps the official keys and the official function. The official
router returns [B, 1, K]; both gates here return [B, K]. Official checkpoints keep only trainable
parameters, so BatchNorm running statistics are absent there: a fresh ``ResNetGate`` has mean 0 and
variance 1, which is what the official test run used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ilora_export.errors import RecipeError

GATE_KINDS = ("dense", "resnet")


class DenseGate(nn.Module):
    """Linear + softmax: [B, d_rec] -> [B, K]."""

    def __init__(self, d_rec: int, num_experts: int):
        super().__init__()
        self.fc = nn.Linear(d_rec, num_experts)

    def forward(self, user_repr: torch.Tensor) -> torch.Tensor:
        return self.fc(user_repr).softmax(-1)  # [B, K]


class _PadShortcut(nn.Module):
    """Parameter-free shortcut: subsample positions, zero-pad channels [B, C, L] -> [B, C', L']."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.before = (planes - in_planes) // 2
        self.after = planes - in_planes - self.before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, :: self.stride], (0, 0, self.before, self.after))


class ResidualBlock(nn.Module):
    """Two k3 convolutions with BatchNorm and a residual: [B, C, L] -> [B, planes, L/stride]."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv1d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(planes)
        self.conv2 = nn.Conv1d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = _PadShortcut(in_planes, planes, 2)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetGate(nn.Module):
    """The official residual CNN router over the user representation as a 1-channel signal."""

    def __init__(self, d_rec: int, num_experts: int, blocks: tuple[int, int, int] = (3, 3, 3)):
        super().__init__()
        self.d_rec = d_rec
        self.conv1 = nn.Conv1d(1, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(16)
        stages, in_planes = [], 16
        for planes, n, stride in zip((16, 32, 64), blocks, (1, 2, 2)):
            layers = []
            for s in [stride] + [1] * (n - 1):
                layers.append(ResidualBlock(in_planes, planes, s))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool1d(1)
        self.gate = DenseGate(64, num_experts)  # keys gate.fc.*, as the official router

    def forward(self, user_repr: torch.Tensor) -> torch.Tensor:
        x = user_repr.unsqueeze(1) if user_repr.dim() == 2 else user_repr  # [B, 1, d]
        x = F.relu(self.bn1(self.conv1(x)))  # [B, 16, d]
        x = self.layer3(self.layer2(self.layer1(x)))  # [B, 64, d/4]
        return self.gate(self.avgpool(x).flatten(1))  # [B, K]


def build_gate(kind: str, d_rec: int, num_experts: int) -> nn.Module:
    """``"dense"`` (the paper's) or ``"resnet"`` (the official shared router)."""
    if kind == "dense":
        return DenseGate(d_rec, num_experts)
    if kind == "resnet":
        return ResNetGate(d_rec, num_experts)
    raise RecipeError(f"unknown gate kind {kind!r}", hint=f"Use one of: {', '.join(GATE_KINDS)}.")
