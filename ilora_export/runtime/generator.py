"""The shared greedy generator: prompt assembly, the decode step (:class:`StepInputs` and :class:`Decoding`:
the cache columns each call writes under left padding, the KV-cache state) and stop conditions. Every decode loop over a
Backend (generation, backend validation, the benchmark) steps through :class:`Decoding`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ilora_export.artifacts import tokens as T
from ilora_export.data.prompts import in_style
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
    min_new_tokens: int = 0  # EOS banned below it: 1 for the official prompts style (model.generate)

    def prompt_builder(self, templates=None) -> PromptBuilder:
        """Prompts from the model's templates, or from ``templates`` read in the model's style."""
        if templates is None:
            templates = self.templates
        elif self.templates is not None:
            templates = in_style(templates, self.templates.style)
        return PromptBuilder(self.tokenizer, self.catalogue.title, templates)

    def stop_rule(self) -> StopRule:
        return StopRule(self.tokenizer, self.eos_ids or None, self.min_new_tokens)


@dataclass
class Generation:
    tokens: list[list[int]]  # generated ids per row, EOS excluded
    item_scores: np.ndarray  # [B, N] SASRec scores of the candidates


def left_padding(mask: np.ndarray) -> np.ndarray:
    """Each row's count of leading pads [B] of a left-padded attention mask [B, S] (ValueError otherwise)."""
    mask = np.asarray(mask).astype(bool)  # [B, S]
    start = mask.shape[1] - mask.sum(axis=1)  # [B]
    if not np.array_equal(mask, np.arange(mask.shape[1])[None, :] >= start[:, None]):
        raise ValueError("the prompt batch is not left-padded (pads, then tokens, in every row)")
    return start.astype(np.int64)


def assemble_prompt(backend: Backend, batch: PromptBatch, token_ids: dict[str, int]):
    """Token embeddings with placeholders replaced, in order, by projected item embeddings.

    Returns (embeds [B, S, H], gate [B, K], candidate scores [B, N]), all numpy in the backend's dtype
    (scores fp32). Row b must hold len_seq[b] ``[HistoryEmb]`` and N ``[CansEmb]`` tokens.
    """
    ids = batch.input_ids.numpy()  # [B, S]
    seq, len_seq = batch.seq.numpy(), batch.len_seq.numpy()  # [B, L], [B]
    cands = batch.candidates.numpy()  # [B, N]
    enc = backend.encode(seq, len_seq, np.concatenate([seq, cands], axis=1))  # items [B, L + N]
    length = seq.shape[1]
    row, position, item = T.placeholder_slots(ids, len_seq, length, cands.shape[1], token_ids)  # [P] each
    embeds = backend.embed(ids).copy()  # [B, S, H]
    embeds[row, position] = enc.item_embeds[row, item]  # [P, H]
    return embeds, enc.gate_weights.astype(backend.dtype), enc.item_scores[:, length:]


@dataclass(frozen=True)
class StepInputs:
    """What one decoder call reads (the Backend.step arguments but the KV state)."""

    embeds: np.ndarray  # [B, S, H]
    cache_position: np.ndarray  # [S] int64: the cache columns this call writes (P tokens already cached)
    row_start: np.ndarray  # [B] int64: each row's first real column (its left padding)
    gate_weights: np.ndarray  # [B, K]

    @classmethod
    def prefill(cls, embeds: np.ndarray, attention_mask: np.ndarray, gate_weights: np.ndarray) -> StepInputs:
        """The first call: a left-padded prompt, embeds [B, S, H] under attention_mask [B, S]."""
        start = left_padding(attention_mask)  # [B]
        return cls(embeds, np.arange(embeds.shape[1], dtype=np.int64), start, gate_weights)

    def then(self, embeds: np.ndarray) -> StepInputs:
        """The next call: one more token per row, embeds [B, 1, H], written at the next column."""
        return replace(self, embeds=embeds, cache_position=self.cache_position[-1:] + 1)

    @property
    def rows(self) -> int:
        return self.embeds.shape[0]

    def astype(self, dtype) -> StepInputs:
        """The same inputs with embeds and gate weights in ``dtype`` (another backend's)."""
        return replace(self, embeds=self.embeds.astype(dtype), gate_weights=self.gate_weights.astype(dtype))


def prompt_inputs(backend: Backend, batch: PromptBatch, token_ids: dict[str, int]) -> tuple[StepInputs, np.ndarray]:
    """The prefill inputs of a prompt batch (assembled by ``backend``) and SASRec's candidate scores [B, N]."""
    embeds, gate, scores = assemble_prompt(backend, batch, token_ids)
    return StepInputs.prefill(embeds, batch.attention_mask.numpy(), gate), scores


class Decoding:
    """One backend's decoder calls over a batch: the KV state carried from each call to the next.

    ``step(inputs)`` runs one call (the first is the prefill); ``next_inputs(inputs, tokens)`` turns the
    tokens chosen from its logits into the inputs of the following call.
    """

    def __init__(self, backend: Backend):
        self.backend = backend
        self.state: Any = None  # the KV cache, in the backend's form; None before the prefill

    def step(self, inputs: StepInputs) -> np.ndarray:
        """One decoder call: last-position logits [B, V] float32."""
        logits, self.state = self.backend.step(
            inputs.embeds, inputs.cache_position, inputs.row_start, inputs.gate_weights, self.state
        )
        return logits

    def next_inputs(self, inputs: StepInputs, tokens: np.ndarray) -> StepInputs:
        """The inputs that feed ``tokens`` [B] (one per row, embedded by this backend) after ``inputs``."""
        return inputs.then(self.backend.embed(tokens[:, None].astype(np.int64)))  # embeds [B, 1, H]


def greedy_generate(
    backend: Backend,
    batch: PromptBatch,
    stop: StopRule,
    token_ids: dict[str, int],
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> Generation:
    """Greedy answers for a left-padded batch; a row stops at EOS or at a newline after its text, and
    EOS is never chosen before ``stop.min_new_tokens`` tokens (the same rule for every backend)."""
    inputs, scores = prompt_inputs(backend, batch, token_ids)
    decoding = Decoding(backend)
    rows = inputs.rows
    out: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    for step in range(max_new_tokens):
        next_tok = stop.allowed(decoding.step(inputs), step).argmax(-1)  # [B]
        for b, tok in enumerate(next_tok.tolist()):
            if not done[b]:
                out[b].append(tok)
                done[b] = stop.is_done(out[b])
        if all(done):
            break
        inputs = decoding.next_inputs(inputs, next_tok)
    return Generation([[t for t in ids if t not in stop.eos_ids] for ids in out], scores)
