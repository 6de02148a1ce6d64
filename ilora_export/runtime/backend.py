"""The interface a runtime implements for the shared generator (numpy arrays in and out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass
class Encoded:
    gate_weights: np.ndarray  # [B, K] float32
    item_embeds: np.ndarray  # [B, N, H] float32
    item_scores: np.ndarray  # [B, N] float32, SASRec's scores of the same items


class Backend(Protocol):
    name: str
    dtype: np.dtype  # of inputs_embeds / gate_weights fed to the decoder

    def encode(self, seq: np.ndarray, len_seq: np.ndarray, items: np.ndarray) -> Encoded:
        """seq [B, L], len_seq [B], items [B, N] (int64) -> gate weights, item embeddings, item scores."""

    def embed(self, token_ids: np.ndarray) -> np.ndarray:
        """token_ids [B, S] int64 -> token embeddings [B, S, H] in ``dtype``."""

    def step(
        self,
        embeds: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        gate_weights: np.ndarray,
        state: Any,
    ) -> tuple[np.ndarray, Any]:
        """One decoder call. ``state`` is None for the prefill, then what the previous call returned.

        embeds [B, S, H]; attention_mask [B, P+S]; position_ids [B, S]; gate_weights [B, K]
        -> last-position logits [B, V] float32 and the new state (the KV cache, in the backend's form).
        """
