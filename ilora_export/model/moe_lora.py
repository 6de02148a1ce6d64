"""MoE-LoRA: a LoRA whose rank is split into K experts mixed by a per-sequence gate.

The bank's layout (names, shapes, orientation, scaling) is :mod:`ilora_export.artifacts.bank`, as in the
official iLoRA code: A [r, in], B [out, r], expert k owns the rank slice ``k*r/K : (k+1)*r/K``, scaling
``alpha / (r / K)``. One gate vector g [B, K] per sequence is shared by every wrapped layer::

    y = base(x) + scaling * ((dropout(x) A^T) * g_r) B^T,   g_r [B, 1, r] = g repeated over each slice

which equals ``base(x) + scaling * sum_k g_k B_k A_k x``. With K = 1 and g = 1 it is plain LoRA.

The expert bank lives in named containers, one per factor, keyed by adapter name (peft style), so its
parameters are named as ``artifacts.bank.parameter_name`` says (``...q_proj.lora_A.default.weight``).
Injection is :func:`inject_moe_lora`; :class:`BankLayout` stacks the bank into its stored layout and back.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager

import torch
from torch import nn

from ilora_export.artifacts.bank import (
    FACTORS,
    BankShape,
    bank_key,
    bank_keys,
    expert_rank,
    from_stored,
    layer_shape,
    lora_scaling,
    parameter_name,
    to_stored,
)

DEFAULT_ADAPTER = "default"


class ExpertGate:
    """The current gate weights [B, K], shared by all MoE-LoRA layers of one model.

    Not a module: it holds no parameters, only the per-batch mixture the gating network produced.
    """

    def __init__(self, num_experts: int):
        self.num_experts = num_experts
        self.weights: torch.Tensor | None = None  # [B, K]

    @contextmanager
    def use(self, weights: torch.Tensor):
        """Route every wrapped layer through ``weights`` [B, K] inside the block."""
        if weights.dim() != 2 or weights.shape[-1] != self.num_experts:
            raise ValueError(f"gate weights must be [B, {self.num_experts}], got {tuple(weights.shape)}")
        previous, self.weights = self.weights, weights
        try:
            yield
        finally:
            self.weights = previous


class MoELoraLinear(nn.Module):
    """A frozen ``nn.Linear`` plus a K-expert LoRA bank mixed by an :class:`ExpertGate`."""

    def __init__(
        self,
        base_layer: nn.Linear,
        *,
        r: int,
        alpha: float,
        num_experts: int,
        dropout: float,
        gate: ExpertGate,
        adapter_name: str = DEFAULT_ADAPTER,
    ):
        super().__init__()
        self.expert_rank = expert_rank(r, num_experts)  # ValueError unless K divides r
        self.base_layer = base_layer
        self.base_layer.requires_grad_(False)
        self.r, self.alpha, self.num_experts = r, alpha, num_experts
        self.scaling = lora_scaling(alpha, r, num_experts)
        self.adapter_name = adapter_name
        self.gate = gate
        dev, dtype = base_layer.weight.device, base_layer.weight.dtype
        for factor in FACTORS:  # self.lora_A, self.lora_B: {adapter: Linear}, weight A [r, in], B [out, r]
            rows, cols = layer_shape(factor, base_layer.in_features, base_layer.out_features, r)
            self.add_module(
                factor, nn.ModuleDict({adapter_name: nn.Linear(cols, rows, bias=False, device=dev, dtype=dtype)})
            )
        self.lora_dropout = nn.ModuleDict({adapter_name: nn.Dropout(dropout) if dropout > 0 else nn.Identity()})
        self.disabled = False  # see adapters_disabled()
        self.reset_lora_parameters()

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def reset_lora_parameters(self) -> None:
        # As peft: A ~ Kaiming-uniform, B = 0, so a fresh adapter leaves the base model unchanged.
        nn.init.kaiming_uniform_(self.lora_A[self.adapter_name].weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B[self.adapter_name].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, S, in]
        result = self.base_layer(x)  # [B, S, out]
        if self.disabled:
            return result
        g = self.gate.weights  # [B, K]
        if g is None:
            raise RuntimeError("MoE-LoRA layer called outside `ExpertGate.use(...)`: no gate weights set")
        name = self.adapter_name
        h = self.lora_A[name](self.lora_dropout[name](x))  # [B, S, r]
        g_r = g.to(h.dtype).repeat_interleave(self.expert_rank, dim=-1)  # [B, r]
        h = h * g_r.unsqueeze(1)  # [B, S, r]
        return result + self.lora_B[name](h) * self.scaling  # [B, S, out]

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, num_experts={self.num_experts}, scaling={self.scaling:g}"


def inject_moe_lora(
    model: nn.Module,
    target_modules: list[str] | tuple[str, ...],
    *,
    r: int,
    alpha: float,
    num_experts: int,
    dropout: float,
    gate: ExpertGate,
) -> list[str]:
    """Wrap every ``nn.Linear`` whose attribute name is in ``target_modules``; returns the wrapped names.

    Raises ``ValueError`` when a target name matches nothing (a typo would otherwise train nothing).
    """
    wanted = set(target_modules)
    found: set[str] = set()
    wrapped: list[str] = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in wanted and isinstance(child, nn.Linear):
                setattr(
                    module,
                    child_name,
                    MoELoraLinear(child, r=r, alpha=alpha, num_experts=num_experts, dropout=dropout, gate=gate),
                )
                wrapped.append(f"{name}.{child_name}" if name else child_name)
                found.add(child_name)
    missing = wanted - found
    if missing:
        raise ValueError(f"target modules not found as nn.Linear in the model: {sorted(missing)}")
    return wrapped


@contextmanager
def adapters_disabled(model: nn.Module):
    """Within the block every MoE-LoRA layer of ``model`` is its base layer alone (the plain model)."""
    layers = list(moe_lora_layers(model).values())
    for layer in layers:
        layer.disabled = True
    try:
        yield
    finally:
        for layer in layers:
            layer.disabled = False


def moe_lora_layers(model: nn.Module) -> dict[str, MoELoraLinear]:
    """All MoE-LoRA layers of ``model`` by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, MoELoraLinear)}


_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class BankLayout:
    """A model's expert bank in the stored layout of :mod:`ilora_export.artifacts.bank`.

    Maps the wrapped layers, by projection and layer index, to the stacked tensors ``lora_A.<proj>``
    and ``lora_B.<proj>`` [L, ...]: :meth:`stored` stacks the bank (A [L, in, r], B [L, r, out]),
    :meth:`stack` stacks it in the layers' own orientation (A [L, r, in], B [L, out, r]), and
    :meth:`parameters_from_stored` / :meth:`parameters_from` map such tensors back to the layers'
    parameter names (for ``torch.func.functional_call``).
    """

    def __init__(self, model: nn.Module):
        by_proj: dict[str, list[tuple[int, str]]] = {}
        layers = moe_lora_layers(model)
        for name in layers:
            m = _LAYER_INDEX.search(name)
            if m is None:
                raise ValueError(f"cannot tell the layer index of {name!r}")
            by_proj.setdefault(name.rsplit(".", 1)[-1], []).append((int(m.group(1)), name))
        self.modules = {p: [n for _, n in sorted(v)] for p, v in sorted(by_proj.items())}
        self.adapter = DEFAULT_ADAPTER
        self._layers = layers

    @property
    def keys(self) -> list[str]:
        return bank_keys(self.modules)

    @property
    def shape(self) -> BankShape:
        """The sizes the stored layout follows from (every projection wrapped in every layer)."""
        counts = {len(names) for names in self.modules.values()}
        ranks = {(m.r, m.num_experts) for m in self._layers.values()}
        features = {
            p: {(self._layers[n].in_features, self._layers[n].out_features) for n in names}
            for p, names in self.modules.items()
        }
        if len(counts) != 1 or len(ranks) != 1 or any(len(f) != 1 for f in features.values()):
            raise ValueError(
                "the expert bank is not one stack per projection: every projection must be wrapped "
                "in every layer, with one rank and expert count"
            )
        ((r, k),) = ranks
        return BankShape(
            num_layers=counts.pop(), features={p: f.pop() for p, f in features.items()}, r=r, num_experts=k
        )

    def stack(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """key -> the layers' factors stacked in their own orientation, A [L, r, in], B [L, out, r]."""
        params = dict(model.named_parameters())
        return {
            bank_key(f, p): torch.stack([params[parameter_name(n, f, self.adapter)] for n in names]).detach()
            for p, names in self.modules.items()
            for f in FACTORS
        }

    def stored(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """key -> the bank as stored, A [L, in, r], B [L, r, out] (contiguous)."""
        return {k: to_stored(v).contiguous() for k, v in self.stack(model).items()}

    def parameters_from(self, bank: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Parameter name -> layer slice of ``bank`` (key -> [L, ...], any orientation: sliced as is)."""
        return {
            parameter_name(n, f, self.adapter): bank[bank_key(f, p)][i]
            for p, names in self.modules.items()
            for i, n in enumerate(names)
            for f in FACTORS
        }

    def parameters_from_stored(self, bank: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Parameter name -> the layer's slice of the stored ``bank``, back in its own orientation."""
        return {name: from_stored(t) for name, t in self.parameters_from(bank).items()}
