"""The decoder graph: the LLM with MoE-LoRA and a KV cache, gate weights and expert bank as inputs.

Needs the `onnx` extra (`pip install ilora-export[onnx]`) for `export_decoder`.

The wrapper's signature is flat tensors (what ``torch.onnx.export(dynamo=True)`` needs); it builds the
``DynamicCache`` from the past tensors itself and routes the bank through ``functional_call``, so the
model's layers are used as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from ilora_export.model.moe_lora import BankLayout


@dataclass(frozen=True)
class DecoderContract:
    """Names and dynamic axes of the decoder graph's inputs and outputs."""

    num_layers: int
    bank_keys: tuple[str, ...]

    @property
    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value")]

    @property
    def bank_names(self) -> list[str]:
        return [f"bank.{k}" for k in self.bank_keys]

    @property
    def input_names(self) -> list[str]:
        return ["inputs_embeds", "attention_mask", "position_ids", "gate_weights", *self.past_names,
                *self.bank_names]

    @property
    def output_names(self) -> list[str]:
        return ["logits", *[n.replace("past_key_values", "present") for n in self.past_names]]


class DecoderWrapper(nn.Module):
    """Flat-tensor decoder step over an ILoRAModel: (embeds, mask, positions, gate, *past, *bank)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.layout = BankLayout(model.llm)
        self.contract = DecoderContract(model.llm.config.num_hidden_layers, tuple(self.layout.keys))

    def forward(self, inputs_embeds, attention_mask, position_ids, gate_weights, *past_and_bank):
        # inputs_embeds [B, S, H]; attention_mask [B, P+S]; position_ids [B, S]; gate_weights [B, K]
        n_past = 2 * self.contract.num_layers
        past, bank = past_and_bank[:n_past], past_and_bank[n_past:]
        cache = DynamicCache(config=self.model.llm.config)
        for i in range(self.contract.num_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)  # [B, kv_heads, P, head_dim]
        params = self.layout.parameters_from(dict(zip(self.contract.bank_keys, bank)))
        with self.model.expert_gate.use(gate_weights):
            out = torch.func.functional_call(self.model.llm, params, (), dict(
                inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                cache=cache, use_cache=True, logits_to_keep=1), strict=False)
        present = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]  # [B, kv_heads, P+S, head_dim]
        return (out.logits, *present)  # logits [B, 1, V]


def sample_inputs(wrapper: DecoderWrapper, batch: int = 2, seq: int = 5, past: int = 3) -> tuple:
    """Trace inputs; sizes avoid 0 and 1 so the exporter keeps those axes symbolic."""
    cfg = wrapper.model.llm.config
    hidden, kv_heads = cfg.hidden_size, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // cfg.num_attention_heads
    dtype = wrapper.model.llm.get_input_embeddings().weight.dtype
    k = wrapper.model.spec.num_experts
    bank = wrapper.layout.stack(wrapper.model.llm)
    return (torch.randn(batch, seq, hidden, dtype=dtype),
            torch.ones(batch, past + seq, dtype=torch.long),
            torch.arange(past, past + seq).repeat(batch, 1),
            torch.softmax(torch.randn(batch, k), -1).to(dtype),
            *[torch.randn(batch, kv_heads, past, head_dim, dtype=dtype) for _ in wrapper.contract.past_names],
            *[bank[key] for key in wrapper.contract.bank_keys])


def export_decoder(model, path, *, external_data: bool = False) -> DecoderContract:
    """Export ``model`` (an ILoRAModel) as the decoder ONNX graph at ``path``."""
    wrapper = DecoderWrapper(model).eval()
    c = wrapper.contract
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    past, total = torch.export.Dim("past_sequence"), torch.export.Dim("total_sequence")
    dynamic = ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq}, {0: batch},
               tuple([{0: batch, 2: past}] * len(c.past_names) + [None] * len(c.bank_names)))
    with torch.no_grad():
        torch.onnx.export(wrapper, sample_inputs(wrapper), str(path), dynamo=True, input_names=c.input_names,
                          output_names=c.output_names, dynamic_shapes=dynamic, external_data=external_data,
                          verbose=False)
    return c
