"""The shared greedy generator: prompt assembly, KV-cache growth, left padding, stop conditions."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ilora_export.artifacts import tokens as T
from ilora_export.model.generate import MAX_NEW_TOKENS, StopRule
from ilora_export.model.prompting import PromptBatch, PromptBuilder
from ilora_export.runtime.backend import Backend


@dataclass
class PromptAssets:
    """What turns evaluation rows into prompts and tokens into answers, whatever the backend."""

    tokenizer: object
    catalogue: object  # ilora_export.data.llara.Catalogue
    templates: object  # ilora_export.data.prompts.PromptTemplates
    token_ids: dict[str, int]
    eos_ids: set[int] = field(default_factory=set)

    def prompt_builder(self, templates=None) -> PromptBuilder:
        return PromptBuilder(self.tokenizer, self.catalogue.title, templates or self.templates)

    def stop_rule(self) -> StopRule:
        return StopRule(self.tokenizer, self.eos_ids or None)


@dataclass
class Generation:
    tokens: list[list[int]]  # generated ids per row, EOS excluded
    item_scores: np.ndarray  # [B, N] SASRec scores of the candidates


def positions_from_mask(mask: np.ndarray) -> np.ndarray:
    """Left-padding-aware positions: [B, S] -> [B, S] (pads get 0)."""
    return np.clip(np.cumsum(mask, axis=-1) - 1, 0, None).astype(np.int64)


def assemble_prompt(backend: Backend, batch: PromptBatch, token_ids: dict[str, int]):
    """Token embeddings with placeholders replaced, in order, by projected item embeddings.

    Returns (embeds [B, S, H], gate [B, K], candidate scores [B, N]), all numpy in the backend's dtype
    (scores fp32). Row b must hold len_seq[b] ``[HistoryEmb]`` and N ``[CansEmb]`` tokens.
    """
    ids = batch.input_ids.numpy()  # [B, S]
    seq, len_seq = batch.seq.numpy(), batch.len_seq.numpy()  # [B, L], [B]
    cands = batch.candidates.numpy()  # [B, N]
    enc = backend.encode(seq, len_seq, np.concatenate([seq, cands], axis=1))
    length = seq.shape[1]
    embeds = backend.embed(ids).copy()  # [B, S, H]
    hist_mask, cans_mask = ids == token_ids[T.HISTORY_EMB], ids == token_ids[T.CANS_EMB]  # [B, S]
    real = np.arange(length)[None, :] < len_seq[:, None]  # [B, L]
    if (hist_mask.sum(1) != real.sum(1)).any() or (cans_mask.sum(1) != cands.shape[1]).any():
        raise ValueError("placeholder tokens in the prompt do not match the history / candidate counts")
    # boolean-mask assignment fills row-major, i.e. in prompt order, as masked_scatter does
    embeds[hist_mask] = enc.item_embeds[:, :length][real]  # [sum(len_seq), H]
    embeds[cans_mask] = enc.item_embeds[:, length:].reshape(-1, embeds.shape[-1])  # [B*N, H]
    return embeds, enc.gate_weights.astype(backend.dtype), enc.item_scores[:, length:]


def greedy_generate(backend: Backend, batch: PromptBatch, stop: StopRule, token_ids: dict[str, int],
                    max_new_tokens: int = MAX_NEW_TOKENS) -> Generation:
    """Greedy answers for a left-padded batch; a row stops at EOS or at a newline after its text."""
    embeds, gate, scores = assemble_prompt(backend, batch, token_ids)
    mask = batch.attention_mask.numpy().astype(np.int64)  # [B, S]
    positions = positions_from_mask(mask)  # [B, S]
    rows = mask.shape[0]
    out: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    state = None
    for _ in range(max_new_tokens):
        logits, state = backend.step(embeds, mask, positions, gate, state)  # [B, V]
        next_tok = logits.argmax(-1)  # [B]
        for b, tok in enumerate(next_tok.tolist()):
            if not done[b]:
                out[b].append(tok)
                done[b] = stop.is_done(out[b])
        if all(done):
            break
        embeds = backend.embed(next_tok[:, None].astype(np.int64))  # [B, 1, H]
        mask = np.concatenate([mask, np.ones((rows, 1), np.int64)], axis=1)  # [B, P+1]
        positions = positions[:, -1:] + 1  # [B, 1]
    return Generation([[t for t in ids if t not in stop.eos_ids] for ids in out], scores)
