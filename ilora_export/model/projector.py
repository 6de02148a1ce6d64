"""Item projector: SASRec item embeddings -> LLM input embeddings (official ``projector.mlp_proj``)."""

from __future__ import annotations

import torch
from torch import nn


class ItemProjector(nn.Module):
    """Linear(rec, hidden) -> GELU -> Linear(hidden, llm); ``hidden`` defaults to ``llm_dim``."""

    def __init__(self, rec_dim: int, llm_dim: int, hidden: int | None = None):
        super().__init__()
        hidden = llm_dim if hidden is None else hidden
        self.mlp_proj = nn.Sequential(nn.Linear(rec_dim, hidden), nn.GELU(), nn.Linear(hidden, llm_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp_proj(x)  # [..., rec] -> [..., llm]
