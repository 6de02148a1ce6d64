"""The decoder graph: the LLM with MoE-LoRA and a KV cache, gate weights and expert bank as inputs.

Needs the `onnx` extra (`pip install ilora-export[onnx]`) for `export_decoder`.

The wrapper's signature is flat tensors (what ``torch.onnx.export(dynamo=True)`` needs) and routes the
bank through ``functional_call``, so the model's layers are used as they are. The KV cache is
preallocated (``artifacts.contract.decoder_contract``): each layer writes its new keys and values into
the past tensors at ``cache_position`` (one ScatterND each, which onnxruntime runs in place when the
present is bound to the past's buffer) and attends over the whole capacity under a mask built from
``cache_position`` and ``row_start``; positions for the rotary embedding come from the same two inputs.
Only the last position goes through the LM head, in fp32 whatever the graph's dtype; RMSNorm runs in
fp32 (the Llama code upcasts) and so do the attention scores and softmax (``export.attention``).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ilora_export.artifacts.contract import (
    GraphContract,
    ModelShape,
    decoder_contract,
    past_names,
)
from ilora_export.export.attention import traced_attention
from ilora_export.export.quiet import quiet_exporter
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


class PreallocatedCache:
    """The cache the traced model updates: per layer, the graph's past tensors [B, kv, C, d]; ``update``
    writes the new columns at ``cache_position`` and hands the whole cache to the attention."""

    def __init__(self, past, cache_position):
        self.keys, self.values = list(past[0::2]), list(past[1::2])  # each [B, kv, C, d]
        self.cache_position = cache_position  # [S]

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        # key_states, value_states [B, kv, S, d]
        self.keys[layer_idx] = write_columns(self.keys[layer_idx], key_states, self.cache_position)
        self.values[layer_idx] = write_columns(self.values[layer_idx], value_states, self.cache_position)
        return self.keys[layer_idx], self.values[layer_idx]

    def present(self) -> list[torch.Tensor]:
        return [t for kv in zip(self.keys, self.values) for t in kv]


def write_columns(cache, new, cache_position):
    """``cache`` [B, kv, C, d] with ``new`` [B, kv, S, d] written at columns ``cache_position`` [S]: indexed
    on every axis, so the exporter emits one ScatterND on the cache itself (``index_copy`` on axis 2 would
    transpose the whole cache twice)."""
    b, kv = cache.shape[0], cache.shape[1]
    rows = torch.arange(b).view(-1, 1, 1)  # [B, 1, 1]
    heads = torch.arange(kv).view(1, -1, 1)  # [1, kv, 1]
    return torch.ops.aten.index_put(cache, [rows, heads, cache_position.view(1, 1, -1)], new)


def cache_mask(cache_position, row_start, capacity: int) -> torch.Tensor:
    """Additive fp32 mask [B, 1, S, C]: query column q of row b sees cache columns row_start[b] <= j <= q."""
    cols = torch.arange(capacity).view(1, 1, -1)  # [1, 1, C]
    valid = (cols >= row_start.view(-1, 1, 1)) & (cols <= cache_position.view(1, -1, 1))  # [B, S, C]
    blocked = torch.tensor(torch.finfo(torch.float32).min)
    return torch.where(valid, torch.tensor(0.0), blocked)[:, None]  # [B, 1, S, C]


def cache_positions(cache_position, row_start) -> torch.Tensor:
    """Rotary positions [B, S] under left padding: column minus the row's start (pads get 0)."""
    return (cache_position.view(1, -1) - row_start.view(-1, 1)).clamp(min=0)


class _LastLogits(nn.Module):
    """Decoder stack, then the LM head on the last position only, in fp32."""

    def __init__(self, llm):
        super().__init__()
        self.llm = llm

    def forward(self, inputs_embeds, mask, position_ids, cache):
        out = self.llm.get_decoder()(
            inputs_embeds=inputs_embeds,
            attention_mask=mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        )
        head = self.llm.get_output_embeddings()
        last = out.last_hidden_state[:, -1:, :].float()  # [B, 1, H]
        bias = None if head.bias is None else head.bias.float()
        return nn.functional.linear(last, head.weight.float(), bias)  # [B, 1, V]


class DecoderWrapper(nn.Module):
    """Flat-tensor decoder step over an ILoRAModel: (embeds, cache_position, row_start, gate, *past, *bank).

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

    def forward(self, inputs_embeds, cache_position, row_start, gate_weights, *past_and_bank):
        # inputs_embeds [B, S, H]; cache_position [S]; row_start [B]; gate_weights [B, K]; past [B, kv, C, d]
        n_past = 2 * self.num_layers
        past, bank = past_and_bank[:n_past], past_and_bank[n_past:]
        cache = PreallocatedCache(past, cache_position)
        mask = cache_mask(cache_position, row_start, past[0].shape[2])  # [B, 1, S, C]
        positions = cache_positions(cache_position, row_start)  # [B, S]
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
            logits = torch.func.functional_call(
                self.step, params, (inputs_embeds, mask, positions, cache), strict=False
            )
        return (logits, *cache.present())  # logits [B, 1, V] fp32; present [B, kv, C, d]


def sample_inputs(wrapper: DecoderWrapper, batch: int = 2, seq: int = 5, past: int = 3) -> tuple:
    """Trace inputs; sizes avoid 0 and 1 so the exporter keeps those axes symbolic."""
    cfg = wrapper.model.llm.config
    shape = model_shape(wrapper.model)
    dtype = wrapper.model.llm.get_input_embeddings().weight.dtype
    k = wrapper.model.spec.num_experts
    capacity = past + seq + 2
    return (
        torch.randn(batch, seq, cfg.hidden_size, dtype=dtype),
        torch.arange(past, past + seq),
        torch.arange(batch) % 2 + 2,
        torch.softmax(torch.randn(batch, k), -1).to(dtype),
        *[
            torch.randn(batch, shape.num_kv_heads, capacity, shape.head_dim, dtype=dtype)
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
    capacity = torch.export.Dim("capacity")
    n_past, n_bank = 2 * wrapper.num_layers, len(wrapper.bank_inputs())
    dynamic = (
        {0: batch, 1: seq},
        {0: seq},
        {0: batch},
        {0: batch},
        tuple([{0: batch, 2: capacity}] * n_past + [None] * n_bank),
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
