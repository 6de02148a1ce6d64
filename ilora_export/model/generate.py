"""Greedy generation with a KV cache over left-padded batches, with the official stop rule.

The official evaluation decodes up to 64 new tokens, strips the text and keeps its first line. We stop a
row as soon as that first line is final: at EOS, or at a newline that follows non-blank text. The
answers are the same; the work is less.
"""

from __future__ import annotations

import torch

from ilora_export.model.ilora import ILoRAModel, positions_from_mask
from ilora_export.model.prompting import PromptBatch

MAX_NEW_TOKENS = 64


def eos_token_ids(tokenizer, generation_config=None) -> set[int]:
    """EOS ids of the tokenizer and, when given, of the model's generation config (int or list)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    extra = getattr(generation_config, "eos_token_id", None)
    ids |= set(extra) if isinstance(extra, (list, tuple)) else ({extra} if extra is not None else set())
    return ids


class StopRule:
    """Per-tokenizer stop conditions: EOS ids and the ids whose text contains a newline."""

    def __init__(self, tokenizer, eos_ids: set[int] | None = None):
        self.tokenizer = tokenizer
        self.eos_ids = set(eos_ids) if eos_ids is not None else eos_token_ids(tokenizer)
        vocab = len(tokenizer)
        texts = tokenizer.batch_decode([[i] for i in range(vocab)])
        self.newline_ids = {i for i, t in enumerate(texts) if "\n" in t}

    def _text(self, token_ids: list[int]) -> str:
        # as the official evaluation decodes: special tokens skipped, no clean-up of spaces
        return self.tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def first_line(self, token_ids: list[int]) -> str:
        return self._text(token_ids).strip().split("\n")[0]

    def is_done(self, token_ids: list[int]) -> bool:
        last = token_ids[-1]
        if last in self.eos_ids:
            return True
        if last in self.newline_ids:
            return "\n" in self._text(token_ids).lstrip()
        return False


@torch.no_grad()
def greedy_generate(model: ILoRAModel, batch: PromptBatch, stop: StopRule,
                    max_new_tokens: int = MAX_NEW_TOKENS) -> list[list[int]]:
    """Generated token ids per row (EOS excluded)."""
    embeds = model.embed_prompt(batch.input_ids, batch.seq, batch.len_seq, batch.candidates)  # [B, S, H]
    gate = model.gate_weights(batch.seq, batch.len_seq)  # [B, K]
    mask = batch.attention_mask  # [B, S]
    positions = positions_from_mask(mask)  # [B, S]
    embed_tokens = model.llm.get_input_embeddings()
    rows = mask.shape[0]
    out_ids: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    cache = None
    with model.expert_gate.use(gate):
        for _ in range(max_new_tokens):
            out = model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                            cache=cache, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values  # the model's Cache object
            next_tok = out.logits[:, -1, :].argmax(-1)  # [B]
            for b, tok in enumerate(next_tok.tolist()):
                if not done[b]:
                    out_ids[b].append(tok)
                    done[b] = stop.is_done(out_ids[b])
            if all(done):
                break
            embeds = embed_tokens(next_tok[:, None])  # [B, 1, H]
            mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)  # [B, P+1]
            positions = positions[:, -1:] + 1  # [B, 1]
    return [[t for t in ids if t not in stop.eos_ids] for ids in out_ids]
