"""SASRec, the sequential recommender iLoRA reads users and items from.

Same maths and parameter names as the official LLaRA/iLoRA SASRec (one self-attention block), so
the official weights load strictly. Written with tensor ops only (no python loops over the batch,
no ``.item()``) so that it traces and exports to ONNX.
"""

from __future__ import annotations

import torch
from torch import nn

# Score given to masked attention positions (the official constant, -4294967295).
_MASKED = -(2**32) + 1


class MultiHeadAttention(nn.Module):
    """Causal self-attention of the official SASRec: scores scaled by sqrt(hidden), not head dim."""

    def __init__(self, hidden: int, num_heads: int = 1, dropout: float = 0.1):
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {num_heads} heads")
        self.hidden_size = hidden
        self.num_heads = num_heads
        self.linear_q = nn.Linear(hidden, hidden)
        self.linear_k = nn.Linear(hidden, hidden)
        self.linear_v = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        b, length, hidden = queries.shape  # [B, L, H]
        heads = self.num_heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, length, heads, hidden // heads).transpose(1, 2)  # [B, h, L, H/h]

        q, k, v = split(self.linear_q(queries)), split(self.linear_k(keys)), split(self.linear_v(keys))
        scores = q @ k.transpose(-1, -2) / self.hidden_size**0.5  # [B, h, L, L]
        key_ok = (keys.sum(-1) != 0)[:, None, None, :]  # [B, 1, 1, L] padded keys sum to 0
        causal = torch.ones(length, length, dtype=torch.bool, device=queries.device).tril()  # [L, L]
        scores = scores.masked_fill(~(key_ok & causal), _MASKED)
        weights = scores.softmax(-1)  # [B, h, L, L]
        query_ok = (queries.sum(-1) != 0)[:, None, :, None]  # [B, 1, L, 1]
        weights = self.dropout(weights * query_ok.to(weights.dtype))
        out = (weights @ v).transpose(1, 2).reshape(b, length, hidden)  # [B, L, H]
        return out + queries


class PositionwiseFeedForward(nn.Module):
    """Two 1x1 convolutions with ReLU, dropout, residual and LayerNorm."""

    def __init__(self, hidden: int, dropout: float = 0.1):
        super().__init__()
        self.w_1 = nn.Conv1d(hidden, hidden, 1)
        self.w_2 = nn.Conv1d(hidden, hidden, 1)
        self.layer_norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.w_2(torch.relu(self.w_1(x.transpose(1, 2)))).transpose(1, 2)  # [B, L, H]
        return self.layer_norm(self.dropout(out) + x)


class SASRec(nn.Module):
    """Item ids ``0..item_num-1``; ``item_num`` is the padding id (sequences padded at the end)."""

    def __init__(self, item_num: int, hidden: int = 64, state_size: int = 10, num_heads: int = 1, dropout: float = 0.1):
        super().__init__()
        self.item_num = int(item_num)
        self.hidden = int(hidden)
        self.state_size = int(state_size)
        self.num_heads = int(num_heads)
        self.dropout_p = float(dropout)
        self.item_embeddings = nn.Embedding(self.item_num + 1, self.hidden)
        nn.init.normal_(self.item_embeddings.weight, 0, 1)
        self.positional_embeddings = nn.Embedding(self.state_size, self.hidden)
        self.emb_dropout = nn.Dropout(dropout)
        self.ln_1 = nn.LayerNorm(self.hidden)
        self.ln_2 = nn.LayerNorm(self.hidden)
        self.ln_3 = nn.LayerNorm(self.hidden)
        self.mh_attn = MultiHeadAttention(self.hidden, self.num_heads, dropout)
        self.feed_forward = PositionwiseFeedForward(self.hidden, dropout)
        self.s_fc = nn.Linear(self.hidden, self.item_num)

    def config(self) -> dict:
        """The constructor arguments."""
        return {
            "item_num": self.item_num,
            "hidden": self.hidden,
            "state_size": self.state_size,
            "num_heads": self.num_heads,
            "dropout": self.dropout_p,
        }

    def item_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        """Raw item embedding rows (what the projector maps into the prompt): [...] -> [..., H]."""
        return self.item_embeddings(ids)

    def user_representation(self, seq: torch.Tensor, len_seq: torch.Tensor) -> torch.Tensor:
        """The official ``cacul_h`` without its singleton axis: seq [B, L], len_seq [B] -> [B, H].

        ``L`` may be at most ``state_size``. A length of 0 reads the last position, as the official
        ``len_seq - 1`` indexing does.
        """
        length = seq.shape[1]
        positions = torch.arange(length, device=seq.device)  # [L]
        x = self.item_embeddings(seq) + self.positional_embeddings(positions)  # [B, L, H]
        x = self.emb_dropout(x)
        mask = (seq != self.item_num).unsqueeze(-1).to(x.dtype)  # [B, L, 1]
        x = x * mask
        attn = self.mh_attn(self.ln_1(x), x)  # [B, L, H]
        out = self.ln_3(self.feed_forward(self.ln_2(attn)) * mask)  # [B, L, H]
        last = torch.remainder(len_seq.to(torch.int64) - 1, length)  # [B]
        index = last.view(-1, 1, 1).expand(-1, 1, out.shape[-1])  # [B, 1, H]
        return out.gather(1, index).squeeze(1)  # [B, H]

    def forward(self, seq: torch.Tensor, len_seq: torch.Tensor) -> torch.Tensor:
        """Next-item logits over the whole catalogue: [B, item_num]."""
        return self.s_fc(self.user_representation(seq, len_seq))

    def score_candidates(self, seq: torch.Tensor, len_seq: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Logits of the candidate ids [B, N] (each < item_num): [B, N]."""
        user = self.user_representation(seq, len_seq)  # [B, H]
        weight = self.s_fc.weight[candidates]  # [B, N, H]
        return (weight @ user.unsqueeze(-1)).squeeze(-1) + self.s_fc.bias[candidates]  # [B, N]
