"""The PyTorch backend: the reference every exported backend is compared with."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ilora_export.model.generate import output_cache
from ilora_export.model.moe_lora import adapters_disabled
from ilora_export.runtime.backend import Encoded, dense_mask, rotary_positions

TORCH_OF = {"float32": torch.float32, "float16": torch.float16}


class TorchBackend:
    """Runs an :class:`~ilora_export.model.ilora.ILoRAModel` eagerly; the state is its (growing) Cache object,
    fed the dense mask and positions that the decoder graph derives from cache_position and row_start."""

    name = "torch"

    def __init__(self, model, device: str = "cpu", *, adapters: bool = True):
        self.model = model.to(device).eval()
        self.adapters = adapters  # False: the base LLM alone (the plain-model baseline)
        self.device = torch.device(device)
        self.torch_dtype = model.llm.get_input_embeddings().weight.dtype
        # host-side arrays: numpy has no bfloat16, so a bfloat16 model exchanges float32 with the generator
        bf16 = self.torch_dtype == torch.bfloat16
        self.dtype = np.dtype("float32") if bf16 else np.dtype(str(self.torch_dtype).removeprefix("torch."))

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    @torch.no_grad()
    def encode(self, seq, len_seq, items) -> Encoded:
        out = self.model.encode(self._t(seq), self._t(len_seq), self._t(items))
        return Encoded(*(t.cpu().numpy() for t in out))

    @torch.no_grad()
    def embed(self, token_ids) -> np.ndarray:
        embeds = self.model.llm.get_input_embeddings()(self._t(token_ids))  # [B, S, H]
        return embeds.to(TORCH_OF[self.dtype.name]).cpu().numpy()

    @torch.no_grad()
    def step(self, embeds, cache_position, row_start, gate_weights, state):
        plain = contextlib.nullcontext() if self.adapters else adapters_disabled(self.model.llm)
        with self.model.expert_gate.use(self._t(gate_weights)), plain:
            out = self.model.llm(
                inputs_embeds=self._t(embeds).to(self.torch_dtype),
                attention_mask=self._t(dense_mask(cache_position, row_start)),  # [B, P+S]
                position_ids=self._t(rotary_positions(cache_position, row_start)),  # [B, S]
                cache=state,
                use_cache=True,
                logits_to_keep=1,
            )
        return out.logits[:, -1, :].float().cpu().numpy(), output_cache(out)  # [B, V]
