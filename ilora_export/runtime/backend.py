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
        cache_position: np.ndarray,
        row_start: np.ndarray,
        gate_weights: np.ndarray,
        state: Any,
    ) -> tuple[np.ndarray, Any]:
        """One decoder call. ``state`` is None for the prefill, then what the previous call returned.

        embeds [B, S, H]; cache_position [S] (the cache columns this call writes, P..P+S-1); row_start [B]
        (each row's first real column: its left padding); gate_weights [B, K]
        -> last-position logits [B, V] float32 and the new state (the KV cache, in the backend's form).
        """


def dense_mask(cache_position: np.ndarray, row_start: np.ndarray) -> np.ndarray:
    """The [B, P+S] int64 attention mask (1 on real columns) that ``cache_position`` and ``row_start`` stand for."""
    cols = np.arange(int(cache_position[-1]) + 1)  # [P+S]
    return (cols[None, :] >= row_start[:, None]).astype(np.int64)  # [B, P+S]


def rotary_positions(cache_position: np.ndarray, row_start: np.ndarray) -> np.ndarray:
    """Positions [B, S] under left padding: the column minus the row's start (pads get 0)."""
    return np.clip(cache_position[None, :] - row_start[:, None], 0, None).astype(np.int64)


# Columns a backend with a growable KV cache allocates beyond what a call needs: attention reads the
# whole capacity, so it stays small; growing copies the cache once every KV_GROWTH tokens.
KV_GROWTH = 16


def grown_capacity(capacity: int, needed: int) -> int:
    """The KV capacity to hold ``needed`` columns: ``capacity`` if it suffices, else needed + KV_GROWTH."""
    return capacity if needed <= capacity else needed + KV_GROWTH
