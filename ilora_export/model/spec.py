"""What an expert bank is, as plain data (no torch): shared by recipes, the model and checkpoints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class AdapterSpec:
    """Hyperparameters of the expert bank, gate and projector (stored in the checkpoint)."""

    r: int = 8
    alpha: float = 32.0
    dropout: float = 0.1
    num_experts: int = 4
    target_modules: list[str] = field(default_factory=lambda: list(ALL_PROJECTIONS))
    gate: str = "dense"
    projector_hidden: int | None = None

    @property
    def scaling(self) -> float:
        return self.alpha / (self.r / self.num_experts)

    def to_dict(self) -> dict:
        return asdict(self) | {"scaling": self.scaling}

    @classmethod
    def from_dict(cls, d: dict) -> "AdapterSpec":
        return cls(**{k: v for k, v in d.items() if k != "scaling"})
