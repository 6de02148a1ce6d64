"""How the TensorRT backend binds device memory, as plain data (testable without a GPU).

- The expert bank is bound once per execution context and never copied again.
- The KV cache is preallocated: per layer and per key/value, two flat buffers of
  ``max_batch * kv_heads * (max_prompt + max_new_tokens) * head_dim`` elements. Step t reads its past
  from one and writes its present to the other (ping-pong), each as a dense [B, kv, P, d] prefix,
  so no step copies the cache.
- Two execution contexts, one per decoder profile: prefill (profile 0) and decode (profile 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from ilora_export.artifacts.bank import is_bank_input
from ilora_export.trt.engine import EngineError
from ilora_export.trt.profiles import Limits


@dataclass(frozen=True)
class StepBinding:
    profile: int  # 0 prefill, 1 decode
    read: int  # ping-pong buffer holding the past (0 or 1)
    write: int  # buffer receiving the present
    input_shapes: dict[str, tuple[int, ...]]
    present_shape: tuple[int, ...]
    past_elems: int
    present_elems: int


class BindingPlan:
    def __init__(self, info, limits: Limits):
        shape = info.shape
        self.limits = limits
        self.kv_heads, self.head_dim = shape.num_kv_heads, shape.head_dim
        self.max_total = limits.max_prompt + limits.max_new_tokens
        self.buffer_elems = limits.max_batch * self.kv_heads * self.max_total * self.head_dim
        self.past_names = [t.name for t in info.decoder.inputs if t.name.startswith("past_key_values.")]
        self.present_names = [n.replace("past_key_values", "present") for n in self.past_names]
        self.bank = {t.name: tuple(t.axes) for t in info.decoder.inputs if is_bank_input(t.name)}
        self.hidden, self.num_experts, self.vocab = shape.hidden_size, shape.num_experts, shape.vocab_size

    def buffers(self) -> dict[str, int]:
        """Elements to preallocate: two KV buffers per past tensor, plus the logits."""
        return {
            **{f"{n}#{i}": self.buffer_elems for n in self.past_names for i in (0, 1)},
            "logits": self.limits.max_batch * self.vocab,
        }

    def step(self, index: int, batch: int, seq: int, past: int) -> StepBinding:
        """The binding of decoder call ``index`` (0 = prefill) for ``batch`` rows, ``seq`` new tokens."""
        lim = self.limits
        if batch > lim.max_batch:
            raise EngineError(
                f"batch of {batch} rows exceeds the engines' --max-batch {lim.max_batch}",
                "lower --batch-size or rebuild with a larger --max-batch",
            )
        if index == 0 and (past != 0 or seq > lim.max_prompt):
            raise EngineError(
                f"prompt of {seq} tokens exceeds the engines' --max-prompt {lim.max_prompt}",
                "rebuild the engines with a larger --max-prompt",
            )
        if index > 0 and (seq != 1 or past + 1 > self.max_total):
            raise EngineError(
                f"decode step beyond --max-prompt + --max-new-tokens ({self.max_total})",
                "rebuild the engines with larger limits",
            )
        kv = (batch, self.kv_heads, past, self.head_dim)
        shapes = {
            "inputs_embeds": (batch, seq, self.hidden),
            "attention_mask": (batch, past + seq),
            "position_ids": (batch, seq),
            "gate_weights": (batch, self.num_experts),
            **{n: kv for n in self.past_names},
            **self.bank,
        }
        present = (batch, self.kv_heads, past + seq, self.head_dim)
        read = index % 2
        return StepBinding(
            profile=0 if index == 0 else 1,
            read=read,
            write=1 - read,
            input_shapes=shapes,
            present_shape=present,
            past_elems=batch * self.kv_heads * past * self.head_dim,
            present_elems=batch * self.kv_heads * (past + seq) * self.head_dim,
        )
