"""What an expert bank is, as plain data (no torch): shared by recipes, the model and checkpoints."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ilora_export.artifacts.bank import lora_scaling
from ilora_export.schema import opt

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class AdapterSpec:
    """Hyperparameters of the expert bank, gate and projector (stored in the checkpoint); the field
    rules validate both a recipe's ``adapter`` section and a checkpoint's."""

    r: int = opt(8, ge=1)
    alpha: float = opt(32.0, gt=0)
    dropout: float = opt(0.1, ge=0, lt=1)
    num_experts: int = opt(4, ge=1)
    target_modules: list[str] = opt(factory=lambda: list(ALL_PROJECTIONS), nonempty=True)
    gate: str = opt("dense", choices=("dense", "resnet"))
    projector_hidden: int | None = opt(None, ge=1)

    @staticmethod
    def _cross_check(v: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        if {"r", "num_experts"} <= v.keys() and v["r"] % v["num_experts"]:
            yield (
                "r",
                (
                    f"must be divisible by adapter.num_experts (r={v['r']}, num_experts={v['num_experts']}): "
                    "each expert gets r / num_experts ranks"
                ),
            )
        modules = v.get("target_modules", ())
        for name in sorted({m for m in modules if modules.count(m) > 1}):
            yield "target_modules", f"lists {name!r} more than once"

    @property
    def scaling(self) -> float:
        return lora_scaling(self.alpha, self.r, self.num_experts)

    def to_dict(self) -> dict:
        return asdict(self) | {"scaling": self.scaling}

    @classmethod
    def from_dict(cls, d: dict) -> AdapterSpec:
        return cls(**{k: v for k, v in d.items() if k != "scaling"})
