"""A Backend that passes every call through to another and records each decoder call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Call:
    embeds: np.ndarray  # [B, S, H]
    cache_position: np.ndarray  # [S]
    row_start: np.ndarray  # [B]
    gate_weights: np.ndarray  # [B, K]
    state_in: Any
    state_out: Any
    logits: np.ndarray  # [B, V]


class RecordingBackend:
    def __init__(self, inner, name: str | None = None):
        self.inner = inner
        self.name = name or inner.name
        self.dtype = inner.dtype
        self.calls: list[Call] = []

    def encode(self, seq, len_seq, items):
        return self.inner.encode(seq, len_seq, items)

    def embed(self, token_ids):
        return self.inner.embed(token_ids)

    def step(self, embeds, cache_position, row_start, gate_weights, state):
        logits, out = self.inner.step(embeds, cache_position, row_start, gate_weights, state)
        self.calls.append(
            Call(
                embeds.copy(),
                cache_position.copy(),
                row_start.copy(),
                gate_weights.copy(),
                state,
                out,
                logits.copy(),
            )
        )
        return logits, out
