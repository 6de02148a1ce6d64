"""The encoder graph: SASRec user representation -> gate weights, and item ids -> projected embeddings.

Inputs ``seq`` [B, L] int64, ``len_seq`` [B] int64, ``items`` [B, N] int64 (the history and candidate
ids whose placeholders the prompt carries); outputs ``gate_weights`` [B, K], ``item_embeds`` [B, N, H]
and SASRec's own scores of the items ``item_scores`` [B, N] (the SASRec-only baseline of an
evaluation). Always fp32: it is small, and the runtime casts its outputs to the decoder's dtype.
Needs the `onnx` extra.
"""

from __future__ import annotations

import torch
from torch import nn

from ilora_export.artifacts.contract import GraphContract, encoder_contract
from ilora_export.export.quiet import quiet_exporter


class EncoderWrapper(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, seq, len_seq, items):
        return self.model.encode(seq, len_seq, items)  # [B, K], [B, N, H], [B, N]


def export_encoder(model, path, shape) -> GraphContract:
    """Export the encoder graph of ``model`` (an fp32 ILoRAModel) at ``path``."""
    wrapper = EncoderWrapper(model).eval()
    contract = encoder_contract(shape)
    state = model.sasrec.state_size
    batch, items = torch.export.Dim("batch"), torch.export.Dim("items")
    sample = (
        torch.randint(0, model.sasrec.item_num, (2, state)),
        torch.tensor([3, state]),
        torch.randint(0, model.sasrec.item_num, (2, 7)),
    )
    with torch.no_grad(), quiet_exporter():
        torch.onnx.export(
            wrapper,
            sample,
            str(path),
            dynamo=True,
            input_names=contract.input_names,
            output_names=contract.output_names,
            dynamic_shapes=({0: batch}, {0: batch}, {0: batch, 1: items}),
            verbose=False,
        )
    return contract
