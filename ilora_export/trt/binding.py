"""How the TensorRT backend binds device memory, as plain data (testable without a GPU).

- The expert bank is bound once per execution context and never copied again.
- The KV cache is preallocated: per layer and per key/value, two flat buffers of
  ``max_batch * kv_heads * (max_prompt + max_new_tokens) * head_dim`` elements, zeroed once (columns
  not yet written must hold finite values). A generation fixes its capacity C = prompt + --max-new-tokens
  at the prefill; every call binds both buffers as [B, kv, C, d]: it reads the past from one and writes
  the present (the past with this call's columns scattered in) to the other (ping-pong). TensorRT
  produces the present as a new tensor, so each call copies the cache once inside the engine.
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
    cache_shape: tuple[int, ...]  # [B, kv, C, d] of past and present alike
    cache_elems: int


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

    def capacity(self, prompt: int) -> int:
        """The KV capacity of a generation whose prompt has ``prompt`` tokens."""
        return prompt + self.limits.max_new_tokens

    def step(self, index: int, batch: int, seq: int, capacity: int, end: int) -> StepBinding:
        """The binding of decoder call ``index`` (0 = prefill) for ``batch`` rows and ``seq`` new tokens
        written up to column ``end`` (exclusive) of a cache of ``capacity`` columns."""
        lim = self.limits
        if batch > lim.max_batch:
            raise EngineError(
                f"batch of {batch} rows exceeds the engines' --max-batch {lim.max_batch}",
                "lower --batch-size or rebuild with a larger --max-batch",
            )
        if index == 0 and (end != seq or seq > lim.max_prompt):
            raise EngineError(
                f"prompt of {seq} tokens exceeds the engines' --max-prompt {lim.max_prompt}",
                "rebuild the engines with a larger --max-prompt",
            )
        if index > 0 and (seq != 1 or end > capacity or capacity > self.max_total):
            raise EngineError(
                f"decode step beyond the prompt + --max-new-tokens {lim.max_new_tokens} the engines were built for",
                "rebuild the engines with a larger --max-new-tokens",
            )
        cache = (batch, self.kv_heads, capacity, self.head_dim)
        shapes = {
            "inputs_embeds": (batch, seq, self.hidden),
            "cache_position": (seq,),
            "row_start": (batch,),
            "gate_weights": (batch, self.num_experts),
            **{n: cache for n in self.past_names},
            **self.bank,
        }
        read = index % 2
        return StepBinding(
            profile=0 if index == 0 else 1,
            read=read,
            write=1 - read,
            input_shapes=shapes,
            cache_shape=cache,
            cache_elems=batch * self.kv_heads * capacity * self.head_dim,
        )
