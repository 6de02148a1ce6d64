"""The official stop rule of greedy generation (the generator itself is ``ilora_export.runtime``).

The official evaluation decodes up to 64 new tokens, strips the text and keeps its first line. We stop a
row as soon as that first line is final: at EOS, or at a newline that follows non-blank text. The
answers are the same; the work is less. It also passes ``min_new_tokens=1``: EOS is banned at the first
step, so an answer is never empty. Checkpoints imported from the official code (prompts style
"official") are generated so; the project's own checkpoints are not (``min_new_tokens`` 0).
"""

from __future__ import annotations

import numpy as np

from ilora_export.artifacts.checkpoint import OFFICIAL_PROMPTS

MAX_NEW_TOKENS = 64


def min_new_tokens_of(prompts_style: str) -> int:
    """The new tokens a row generates before EOS may end it: 1 for the official style, else 0."""
    return 1 if prompts_style == OFFICIAL_PROMPTS else 0


def eos_token_ids(tokenizer, generation_config=None) -> set[int]:
    """EOS ids of the tokenizer and, when given, of the model's generation config (int or list)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    extra = getattr(generation_config, "eos_token_id", None)
    ids |= set(extra) if isinstance(extra, (list, tuple)) else ({extra} if extra is not None else set())
    return ids


class StopRule:
    """Per-tokenizer stop conditions: EOS ids and the ids whose text contains a newline; EOS banned
    while fewer than ``min_new_tokens`` tokens are generated."""

    def __init__(self, tokenizer, eos_ids: set[int] | None = None, min_new_tokens: int = 0):
        self.tokenizer = tokenizer
        self.eos_ids = set(eos_ids) if eos_ids is not None else eos_token_ids(tokenizer)
        self.min_new_tokens = min_new_tokens
        vocab = len(tokenizer)
        texts = tokenizer.batch_decode([[i] for i in range(vocab)])
        self.newline_ids = {i for i, t in enumerate(texts) if "\n" in t}

    def _text(self, token_ids: list[int]) -> str:
        # as the official evaluation decodes: special tokens skipped, no clean-up of spaces
        return self.tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def first_line(self, token_ids: list[int]) -> str:
        return self._text(token_ids).strip().split("\n")[0]

    def allowed(self, logits: np.ndarray, step: int) -> np.ndarray:
        """The logits [B, V] of generated step ``step`` (0: the first new token) as greedy decoding takes
        their argmax: EOS at -inf while ``step < min_new_tokens`` (as Hugging Face's ``min_new_tokens``
        processor), else unchanged."""
        banned = [i for i in self.eos_ids if i < logits.shape[-1]]
        if step >= self.min_new_tokens or not banned:
            return logits
        logits = logits.copy()
        logits[:, banned] = -np.inf
        return logits

    def is_done(self, token_ids: list[int]) -> bool:
        last = token_ids[-1]
        if last in self.eos_ids:
            return True
        if last in self.newline_ids:
            return "\n" in self._text(token_ids).lstrip()
        return False


def output_cache(out):
    """The KV cache a Hugging Face model call returned: ``out.cache`` (transformers >= 5.x names it so;
    reading the older ``past_key_values`` logs a deprecation warning), else ``out.past_key_values``."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values
