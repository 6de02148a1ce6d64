"""The attention the decoder graph is traced with: grouped-query attention whose scores, mask and
softmax are fp32, and which reads each KV head once (no repeated K/V).

Hugging Face's eager attention asks for ``softmax(..., dtype=float32)``, but the ONNX exporter lowers
that as an fp16 Softmax followed by a Cast, so an fp16 graph would lose its fp32 island. Here the
scores are upcast before the mask is added, explicitly. In an fp32 graph the casts are no-ops.
"""

from __future__ import annotations

import contextlib

import torch

NAME = "ilora_fp32_softmax"


def fp32_softmax_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Grouped-query attention that never repeats K/V: the ``g`` query heads sharing a KV head are
    stacked on the row axis, so each KV head is read once by one MatMul (no Expand of the cache)."""
    # query [B, h, S, d]; key, value [B, kv, T, d]; attention_mask [B, 1, S, T] additive (or None)
    b, h, s, d = query.shape
    kv, t = key.shape[1], key.shape[2]
    groups = h // kv  # query heads per KV head (head j uses KV head j // groups)
    q = query.reshape(b, kv, groups * s, d)  # [B, kv, g*S, d]
    scores = torch.matmul(q, key.transpose(2, 3)).float() * scaling  # [B, kv, g*S, T] fp32
    scores = scores.reshape(b, kv, groups, s, t)  # [B, kv, g, S, T]
    if attention_mask is not None:
        scores = scores + attention_mask.float()[:, :, None]  # mask [B, 1, 1, S, T]
    probs = torch.softmax(scores, dim=-1).to(value.dtype)  # [B, kv, g, S, T]
    out = torch.matmul(probs.reshape(b, kv, groups * s, t), value)  # [B, kv, g*S, d]
    out = out.reshape(b, h, s, d).transpose(1, 2).contiguous()  # [B, S, h, d]
    return out, probs.reshape(b, h, s, t)


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
