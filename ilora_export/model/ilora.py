"""The iLoRA model: a Hugging Face causal LM with MoE-LoRA, SASRec, a gating network and a projector.

Placeholder tokens (``[HistoryEmb]``, ``[CansEmb]``, ``[ItemEmb]``) in the prompt get their input
embedding replaced by the projected SASRec embedding of the item they follow. The gate reads SASRec's
user representation of the history and mixes the LoRA experts once per sequence.
"""

from __future__ import annotations

import torch
from torch import nn

from ilora_export.artifacts import bank
from ilora_export.artifacts import tokens as T
from ilora_export.artifacts.spec import AdapterSpec
from ilora_export.model.gating import build_gate
from ilora_export.model.moe_lora import ExpertGate, inject_moe_lora
from ilora_export.model.projector import ItemProjector
from ilora_export.model.sasrec import SASRec


def add_ilora_tokens(tokenizer, llm: nn.Module) -> dict[str, int]:
    """Add ``[PAD]`` and the placeholder tokens as the official code does; returns their ids.

    The new embedding rows (input and, if untied, output) are set to the mean of the existing rows, a
    deterministic choice; they are saved with the checkpoint anyway.
    """
    old = llm.get_input_embeddings().weight.shape[0]
    tokenizer.add_special_tokens({"pad_token": T.PAD})
    tokenizer.add_special_tokens({"additional_special_tokens": list(T.PLACEHOLDERS)})
    tokenizer.padding_side = "left"
    new = len(tokenizer)
    if new > old:
        llm.resize_token_embeddings(new, mean_resizing=False)
        with torch.no_grad():
            emb_in = llm.get_input_embeddings().weight
            emb_in[old:] = emb_in[:old].mean(0)
            emb_out = llm.get_output_embeddings().weight
            if emb_out.data_ptr() != emb_in.data_ptr():
                emb_out[old:] = emb_out[:old].mean(0)
    return token_ids(tokenizer)


def token_ids(tokenizer) -> dict[str, int]:
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in (T.PAD, *T.PLACEHOLDERS)}
    unk = tokenizer.unk_token_id
    missing = [n for n, i in ids.items() if i is None or (unk is not None and i == unk)]
    if missing:
        raise ValueError(f"tokenizer lacks the iLoRA tokens {missing}")
    return ids


class ILoRAModel(nn.Module):
    """LLM + MoE-LoRA expert bank + SASRec + gate + item projector."""

    def __init__(
        self,
        llm: nn.Module,
        tokenizer,
        sasrec: SASRec,
        spec: AdapterSpec,
        *,
        gate_net: nn.Module | None = None,
        projector: nn.Module | None = None,
    ):
        super().__init__()
        self.tokenizer = tokenizer
        self.spec = spec
        self.token_ids = token_ids(tokenizer)
        self.expert_gate = ExpertGate(spec.num_experts)
        llm.requires_grad_(False)
        inject_moe_lora(
            llm,
            spec.target_modules,
            r=spec.r,
            alpha=spec.alpha,
            num_experts=spec.num_experts,
            dropout=spec.dropout,
            gate=self.expert_gate,
        )
        self.llm = llm
        self.sasrec = sasrec.requires_grad_(False)
        d_rec = sasrec.item_embeddings.weight.shape[1]
        d_llm = llm.get_input_embeddings().weight.shape[1]
        self.gate_net = gate_net if gate_net is not None else build_gate(spec.gate, d_rec, spec.num_experts)
        self.projector = projector if projector is not None else ItemProjector(d_rec, d_llm, spec.projector_hidden)
        dtype = llm.get_input_embeddings().weight.dtype
        self.gate_net.to(dtype)
        self.projector.to(dtype)

    # -- pieces -------------------------------------------------------------------------------------
    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The adapter: expert bank, gate and projector (the base LLM and SASRec stay frozen)."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Expert bank + gate + projector, keyed by their names in this model."""
        keep = tuple(f"{f}." for f in bank.FACTORS)  # the expert bank's named containers
        sd = {f"llm.{n}": p for n, p in self.llm.named_parameters() if any(k in n for k in keep)}
        sd |= {f"gate_net.{n}": t for n, t in self.gate_net.state_dict().items()}
        sd |= {f"projector.{n}": t for n, t in self.projector.state_dict().items()}
        return sd

    def added_token_rows(self) -> dict[str, torch.Tensor]:
        """Embedding rows of the tokens iLoRA added (from the first added id on)."""
        first = min(self.token_ids.values())
        rows = {"input_embeddings": self.llm.get_input_embeddings().weight[first:]}
        out = self.llm.get_output_embeddings().weight
        if out.data_ptr() != self.llm.get_input_embeddings().weight.data_ptr():
            rows["output_embeddings"] = out[first:]
        return rows

    def load_added_token_rows(self, rows: dict[str, torch.Tensor]) -> None:
        first = min(self.token_ids.values())
        with torch.no_grad():
            self.llm.get_input_embeddings().weight[first:] = rows["input_embeddings"]
            if "output_embeddings" in rows:
                self.llm.get_output_embeddings().weight[first:] = rows["output_embeddings"]

    def gate_weights(self, seq: torch.Tensor, len_seq: torch.Tensor) -> torch.Tensor:
        """Per-sequence expert mixture. seq [B, L], len_seq [B] -> [B, K]."""
        user = self.sasrec.user_representation(seq, len_seq)  # [B, d_rec]
        return self.gate_net(user.to(self.projector_dtype))  # [B, K]

    @property
    def projector_dtype(self) -> torch.dtype:
        return next(self.projector.parameters()).dtype

    def item_embeds(self, items: torch.Tensor) -> torch.Tensor:
        """items [...] -> projected embeddings [..., H]."""
        return self.projector(self.sasrec.item_embedding(items).to(self.projector_dtype))

    def encode(self, seq: torch.Tensor, len_seq: torch.Tensor, items: torch.Tensor):
        """What a deployment's encoder computes: seq [B, L], len_seq [B], items [B, N] ->
        gate weights [B, K], projected item embeddings [B, N, H] and SASRec's scores of the items [B, N]
        (all fp32). Padding ids among the items get a score of the last item; callers ignore those."""
        gate = self.gate_weights(seq, len_seq).float()  # [B, K]
        embeds = self.item_embeds(items).float()  # [B, N, H]
        scorable = items.clamp(max=self.sasrec.item_num - 1)  # [B, N]
        return gate, embeds, self.sasrec.score_candidates(seq, len_seq, scorable).float()

    def embed_prompt(
        self, input_ids: torch.Tensor, seq: torch.Tensor, len_seq: torch.Tensor, candidates: torch.Tensor
    ) -> torch.Tensor:
        """Token embeddings with placeholders replaced, in order, by projected item embeddings.

        input_ids [B, S]; seq [B, L] (the first len_seq items are real); candidates [B, N] -> [B, S, H].
        Row b must hold exactly len_seq[b] ``[HistoryEmb]`` and N ``[CansEmb]`` tokens.
        """
        embeds = self.llm.get_input_embeddings()(input_ids)  # [B, S, H]
        slots = T.placeholder_slots(
            input_ids.cpu().numpy(), len_seq.cpu().numpy(), seq.shape[1], candidates.shape[1], self.token_ids
        )
        row, position, item = (torch.from_numpy(a).to(input_ids.device) for a in slots)  # [P] each
        hist = self.item_embeds(seq).to(embeds.dtype)  # [B, L, H]
        cans = self.item_embeds(candidates).to(embeds.dtype)  # [B, N, H]
        items = torch.cat([hist, cans], dim=1)  # [B, L + N, H]
        return embeds.index_put((row, position), items[row, item])  # [B, S, H]

    # -- forward / generation ------------------------------------------------------------------------
    def forward(self, input_ids, attention_mask, seq, len_seq, candidates, labels=None, *, items: bool = True):
        """Teacher-forced forward (training): returns the HF output with ``loss`` when labels given.

        ``items=False``: a text-only prompt (``[PH]`` tokens keep their own embedding; the projector is
        not used), as in the official training's curriculum."""
        if items:
            embeds = self.embed_prompt(input_ids, seq, len_seq, candidates)  # [B, S, H]
        else:
            embeds = self.llm.get_input_embeddings()(input_ids)  # [B, S, H]
        gate = self.gate_weights(seq, len_seq)
        position_ids = positions_from_mask(attention_mask)
        with self.expert_gate.use(gate):
            return self.llm(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                labels=labels,
                use_cache=False,
            )


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Left-padding-aware position ids: [B, S] mask -> [B, S] positions (pads get 0)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)
