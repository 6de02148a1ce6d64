"""The attention the decoder graph is traced with: eager attention whose scores, mask and softmax are fp32.

Hugging Face's eager attention asks for ``softmax(..., dtype=float32)``, but the ONNX exporter lowers
that as an fp16 Softmax followed by a Cast, so an fp16 graph would lose its fp32 island. Here the
scores are upcast before the mask is added, explicitly. In an fp32 graph the casts are no-ops.
"""

from __future__ import annotations

import contextlib

import torch

NAME = "ilora_fp32_softmax"


def fp32_softmax_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    # query [B, h, S, d]; key, value [B, kv, T, d]; attention_mask [B, 1, S, T] additive (or None)
    groups = module.num_key_value_groups
    b, kv, t, d = key.shape
    key = key[:, :, None].expand(b, kv, groups, t, d).reshape(b, kv * groups, t, d)  # [B, h, T, d]
    value = value[:, :, None].expand(b, kv, groups, t, d).reshape(b, kv * groups, t, d)  # [B, h, T, d]
    scores = torch.matmul(query, key.transpose(2, 3)).float() * scaling  # [B, h, S, T] fp32
    if attention_mask is not None:
        scores = scores + attention_mask.float()
    probs = torch.softmax(scores, dim=-1).to(value.dtype)  # [B, h, S, T]
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()  # [B, S, h, d]
    return out, probs


@contextlib.contextmanager
def traced_attention(llm):
    """Use :func:`fp32_softmax_attention` (with the eager mask) in ``llm`` for the duration."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(NAME, fp32_softmax_attention)
    AttentionMaskInterface.register(NAME, eager_mask)
    configs = [m.config for m in llm.modules() if hasattr(m, "config")]
    old = [c._attn_implementation for c in configs]
    for c in configs:
        c._attn_implementation = NAME
    try:
        yield
    finally:
        for c, name in zip(configs, old):
            c._attn_implementation = name
