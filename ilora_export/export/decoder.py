"""The decoder graph: the LLM with MoE-LoRA and a KV cache, gate weights and expert bank as inputs.

Needs the `onnx` extra (`pip install ilora-export[onnx]`) for `export_decoder`.

The wrapper's signature is flat tensors (what ``torch.onnx.export(dynamo=True)`` needs); it builds the
``DynamicCache`` from the past tensors itself and routes the bank through ``functional_call``, so the
model's layers are used as they are. Only the last position goes through the LM head, in fp32 whatever
the graph's dtype; RMSNorm runs in fp32 (the Llama code upcasts) and so do the attention scores and
softmax (``export.attention``).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers import DynamicCache

from ilora_export.artifacts.contract import (
    GraphContract,
    ModelShape,
    decoder_contract,
    past_names,
)
from ilora_export.export.attention import traced_attention
from ilora_export.export.quiet import quiet_exporter
from ilora_export.model.generate import output_cache
from ilora_export.model.moe_lora import BankLayout, adapters_disabled

DTYPES = {"float32": torch.float32, "float16": torch.float16}


def graph_bank(model) -> dict[str, torch.Tensor]:
    """An ILoRAModel's expert bank as the graph takes it and ``bank.safetensors`` stores it, by key
    (``artifacts.bank``: stacked over layers, transposed, so a layer's slice is a plain MatMul operand)."""
    return BankLayout(model.llm).stored(model.llm)


def model_shape(model) -> ModelShape:
    """Sizes of an ILoRAModel's LLM and expert bank (in the stored layout)."""
    cfg = model.llm.config
    return ModelShape(
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_hidden_layers,
        num_kv_heads=cfg.num_key_value_heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
        vocab_size=model.llm.get_output_embeddings().weight.shape[0],
        num_experts=model.spec.num_experts,
        bank_shapes=BankLayout(model.llm).shape.shapes,
    )


class _LastLogits(nn.Module):
    """Decoder stack, then the LM head on the last position only, in fp32."""

    def __init__(self, llm):
        super().__init__()
        self.llm = llm

    def forward(self, inputs_embeds, attention_mask, position_ids, cache):
        out = self.llm.get_decoder()(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        )
        head = self.llm.get_output_embeddings()
        last = out.last_hidden_state[:, -1:, :].float()  # [B, 1, H]
        bias = None if head.bias is None else head.bias.float()
        return nn.functional.linear(last, head.weight.float(), bias), output_cache(out)  # [B, 1, V]


class DecoderWrapper(nn.Module):
    """Flat-tensor decoder step over an ILoRAModel: (embeds, mask, positions, gate, *past, *bank).

    With ``bake_experts`` the bank is the model's own parameters (graph initializers) and not an input.
    """

    def __init__(self, model, *, bake_experts: bool = False):
        super().__init__()
        self.model = model
        self.step = _LastLogits(model.llm)
        self.layout = BankLayout(model.llm)
        self.bake_experts = bake_experts
        dtype = {v: k for k, v in DTYPES.items()}[model.llm.get_input_embeddings().weight.dtype]
        self.contract: GraphContract = decoder_contract(model_shape(model), dtype, bake_experts=bake_experts)
        self.num_layers = model.llm.config.num_hidden_layers

    def bank_inputs(self) -> list[torch.Tensor]:
        """The model's own bank in contract order (empty when baked)."""
        if self.bake_experts:
            return []
        bank = graph_bank(self.model)
        return [bank[k] for k in self.layout.keys]

    def forward(self, inputs_embeds, attention_mask, position_ids, gate_weights, *past_and_bank):
        # inputs_embeds [B, S, H]; attention_mask [B, P+S]; position_ids [B, S]; gate_weights [B, K]
        n_past = 2 * self.num_layers
        past, bank = past_and_bank[:n_past], past_and_bank[n_past:]
        cache = DynamicCache(config=self.model.llm.config)
        for i in range(self.num_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)  # [B, kv_heads, P, head_dim]
        # each layer's slice back in its own orientation: that Transpose and the linear's own cancel in
        # the exported graph
        params = (
            {}
            if self.bake_experts
            else {
                f"llm.{k}": v for k, v in self.layout.parameters_from_stored(dict(zip(self.layout.keys, bank))).items()
            }
        )
        with self.model.expert_gate.use(gate_weights):
            logits, cache = torch.func.functional_call(
                self.step, params, (inputs_embeds, attention_mask, position_ids, cache), strict=False
            )
        present = []
        for layer in cache.layers:
            present += [layer.keys, layer.values]  # [B, kv_heads, P+S, head_dim]
        return (logits, *present)  # logits [B, 1, V] fp32


def sample_inputs(wrapper: DecoderWrapper, batch: int = 2, seq: int = 5, past: int = 3) -> tuple:
    """Trace inputs; sizes avoid 0 and 1 so the exporter keeps those axes symbolic."""
    cfg = wrapper.model.llm.config
    shape = model_shape(wrapper.model)
    dtype = wrapper.model.llm.get_input_embeddings().weight.dtype
    k = wrapper.model.spec.num_experts
    return (
        torch.randn(batch, seq, cfg.hidden_size, dtype=dtype),
        torch.ones(batch, past + seq, dtype=torch.long),
        torch.arange(past, past + seq).repeat(batch, 1),
        torch.softmax(torch.randn(batch, k), -1).to(dtype),
        *[
            torch.randn(batch, shape.num_kv_heads, past, shape.head_dim, dtype=dtype)
            for _ in past_names(shape.num_layers)
        ],
        *wrapper.bank_inputs(),
    )


def export_decoder(
    model, path, *, bake_experts: bool = False, external_data: bool = True, plain: bool = False
) -> GraphContract:
    """Export ``model`` (an ILoRAModel, in the graph's dtype) as the decoder ONNX graph at ``path``.

    ``plain`` exports the base LLM alone (adapters disabled, bank baked away, the gate input unused):
    the same interface, to measure what the expert bank costs.
    """
    bake_experts = bake_experts or plain
    wrapper = DecoderWrapper(model, bake_experts=bake_experts).eval()
    c = wrapper.contract
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    past, total = torch.export.Dim("past_sequence"), torch.export.Dim("total_sequence")
    n_past, n_bank = 2 * wrapper.num_layers, len(wrapper.bank_inputs())
    dynamic = (
        {0: batch, 1: seq},
        {0: batch, 1: total},
        {0: batch, 1: seq},
        {0: batch},
        tuple([{0: batch, 2: past}] * n_past + [None] * n_bank),
    )
    plain_ctx = adapters_disabled(model.llm) if plain else contextlib.nullcontext()
    with torch.no_grad(), traced_attention(model.llm), quiet_exporter(), plain_ctx:
        program = torch.onnx.export(
            wrapper,
            sample_inputs(wrapper),
            dynamo=True,
            input_names=c.input_names,
            output_names=c.output_names,
            dynamic_shapes=dynamic,
            verbose=False,
        )
        program.save(str(path), external_data=external_data)
    return c
