"""Special tokens the iLoRA prompt uses (the names of the official code): prompts, checkpoints and
exports name them; and where a prompt's placeholders take their item embeddings."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

PAD = "[PAD]"
PH = "[PH]"
HISTORY_EMB = "[HistoryEmb]"
CANS_EMB = "[CansEmb]"
ITEM_EMB = "[ItemEmb]"

#: Order matters: it fixes the ids the tokens get when added to a tokenizer.
PLACEHOLDERS = (PH, HISTORY_EMB, CANS_EMB, ITEM_EMB)


class PlaceholderSlots(NamedTuple):
    """Where each projected item embedding goes: ``embeds[row, position] = items[row, item]``.

    ``items`` is laid out [B, L + N]: the L history slots, then the N candidates (the encoder's item order).
    All three are int64 [P], P the number of placeholders in the batch, in row-major prompt order.
    """

    row: np.ndarray  # [P]
    position: np.ndarray  # [P] index into the prompt's S tokens
    item: np.ndarray  # [P] index into the L + N items


def placeholder_slots(
    input_ids: np.ndarray, len_seq: np.ndarray, history_width: int, num_candidates: int, token_ids: dict[str, int]
) -> PlaceholderSlots:
    """The prompt's placeholders and the item each takes, in order, as the official code assigns them.

    input_ids [B, S] (any padding side); len_seq [B]: row b's first len_seq[b] history items are real; the
    i-th ``[HistoryEmb]`` of row b takes history item i, its j-th ``[CansEmb]`` candidate j (item L + j).
    Raises ValueError unless row b holds exactly len_seq[b] ``[HistoryEmb]`` and N ``[CansEmb]`` tokens.
    """
    ids, len_seq = np.asarray(input_ids), np.asarray(len_seq)
    hist = ids == token_ids[HISTORY_EMB]  # [B, S]
    cans = ids == token_ids[CANS_EMB]  # [B, S]
    if (hist.sum(1) != np.clip(len_seq, 0, history_width)).any() or (cans.sum(1) != num_candidates).any():
        raise ValueError("placeholder tokens in the prompt do not match the history / candidate counts")
    rows, positions, items = [], [], []
    for mask, first in ((hist, 0), (cans, history_width)):
        r, p = np.nonzero(mask)  # [P_kind] each, row-major: each row's placeholders in prompt order
        rows.append(r), positions.append(p)
        items.append(first + np.cumsum(mask, axis=1)[r, p] - 1)  # rank of the placeholder within its row
    return PlaceholderSlots(*(np.concatenate(a).astype(np.int64) for a in (rows, positions, items)))
