"""The encoder graph: SASRec user representation -> gate weights, and item ids -> projected embeddings.

Inputs ``seq`` [B, L] int64, ``len_seq`` [B] int64, ``items`` [B, N] int64 (the history and candidate
ids whose placeholders the prompt carries); outputs ``gate_weights`` [B, K] and ``item_embeds``
[B, N, H]. Needs the `onnx` extra.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class EncoderContract:
    input_names: tuple[str, ...] = ("seq", "len_seq", "items")
    output_names: tuple[str, ...] = ("gate_weights", "item_embeds")


class EncoderWrapper(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, seq, len_seq, items):
        gate = self.model.gate_weights(seq, len_seq)  # [B, K]
        return gate, self.model.item_embeds(items)  # [B, N, H]


def export_encoder(model, path) -> EncoderContract:
    """Export the encoder graph of ``model`` (an ILoRAModel) at ``path``."""
    wrapper = EncoderWrapper(model).eval()
    contract = EncoderContract()
    state = model.sasrec.state_size
    batch, items = torch.export.Dim("batch"), torch.export.Dim("items")
    sample = (torch.randint(0, model.sasrec.item_num, (2, state)), torch.tensor([3, state]),
              torch.randint(0, model.sasrec.item_num, (2, 7)))
    with torch.no_grad():
        torch.onnx.export(wrapper, sample, str(path), dynamo=True, input_names=list(contract.input_names),
                          output_names=list(contract.output_names),
                          dynamic_shapes=({0: batch}, {0: batch}, {0: batch, 1: items}), verbose=False)
    return contract
