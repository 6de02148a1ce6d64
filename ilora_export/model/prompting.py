"""Prompt assembly: evaluation/training rows -> token ids with placeholder tokens, batched with padding."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ilora_export.data.prompts import PromptTemplates, render_prompt

IGNORE_INDEX = -100


@dataclass
class Example:
    """One prompt, tokenized. ``labels`` is set for training examples (answer tokens only)."""

    input_ids: list[int]
    seq: list[int]
    len_seq: int
    candidates: list[int]
    labels: list[int] | None = None


@dataclass
class PromptBatch:
    input_ids: torch.Tensor  # [B, S]
    attention_mask: torch.Tensor  # [B, S]
    seq: torch.Tensor  # [B, L]
    len_seq: torch.Tensor  # [B]
    candidates: torch.Tensor  # [B, N]
    labels: torch.Tensor | None = None  # [B, S]

    def to(self, device) -> PromptBatch:
        return PromptBatch(
            *(
                None if t is None else t.to(device)
                for t in (self.input_ids, self.attention_mask, self.seq, self.len_seq, self.candidates, self.labels)
            )
        )


class PromptBuilder:
    """Renders templates with item titles and tokenizes them (prompt and answer tokenized apart).

    The answer is the target title followed by the newline terminator, as in the official training.
    """

    terminator = "\n"

    def __init__(self, tokenizer, titles, templates: PromptTemplates):
        self.tokenizer = tokenizer
        self.titles = titles  # item id -> title (a Catalogue's `title` or a dict's __getitem__)
        self.templates = templates

    def _title(self, item: int) -> str:
        return self.titles(item) if callable(self.titles) else self.titles[item]

    def text(self, seq, len_seq: int, candidates, template_index: int = 0, *, text_only: bool = False) -> str:
        template = self.templates.templates[template_index % len(self.templates.templates)]
        return render_prompt(
            template,
            [self._title(i) for i in seq[:len_seq]],
            [self._title(i) for i in candidates],
            text_only=text_only,
        )

    def encode(
        self,
        seq,
        len_seq: int,
        candidates,
        *,
        template_index: int = 0,
        answer: int | None = None,
        text_only: bool = False,
        pair: bool = False,
    ) -> Example:
        """Token ids of one prompt, and with ``answer`` the answer appended and its ``labels``.

        ``pair``: the answer is tokenised as the second sequence of a pair, as the official training does,
        so a tokenizer that opens every sequence with BOS (Llama) puts one before the answer, and the
        labels are BOS + title + newline; otherwise (tokenizers without BOS) it equals the default.
        ``text_only``: titles carry ``[PH]`` instead of placeholders (no item embeddings)."""
        prompt = self.text(seq, len_seq, candidates, template_index, text_only=text_only)
        ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        labels = None
        if answer is not None:
            answer_text = self._title(answer) + self.terminator
            if pair:
                both = self.tokenizer(prompt, answer_text, add_special_tokens=True)["input_ids"]
                if both[: len(ids)] != ids:
                    raise ValueError("the tokenizer encodes a prompt differently alone and as a pair's first part")
                ans = both[len(ids) :]
            else:
                ans = self.tokenizer(answer_text, add_special_tokens=False)["input_ids"]
            labels = [IGNORE_INDEX] * len(ids) + list(ans)
            ids = ids + list(ans)
        return Example(list(ids), list(seq), int(len_seq), list(candidates), labels)

    def collate(self, examples: list[Example], *, padding_side: str = "left") -> PromptBatch:
        pad = self.tokenizer.pad_token_id
        width = max(len(e.input_ids) for e in examples)
        ids, mask, labels = [], [], []
        for e in examples:
            n = width - len(e.input_ids)
            fill, ones = [pad] * n, [1] * len(e.input_ids)
            ign = [IGNORE_INDEX] * n
            if padding_side == "left":
                ids.append(fill + e.input_ids), mask.append([0] * n + ones)
                labels.append(ign + (e.labels or []))
            else:
                ids.append(e.input_ids + fill), mask.append(ones + [0] * n)
                labels.append((e.labels or []) + ign)
        has_labels = all(e.labels is not None for e in examples)
        return PromptBatch(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            seq=torch.tensor([e.seq for e in examples], dtype=torch.long),
            len_seq=torch.tensor([e.len_seq for e in examples], dtype=torch.long),
            candidates=torch.tensor([e.candidates for e in examples], dtype=torch.long),
            labels=torch.tensor(labels, dtype=torch.long) if has_labels else None,
        )
