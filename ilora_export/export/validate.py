"""Backend-against-backend comparison on real prompts: encoder outputs, prefill and decode logits.

Used right after an export (built-in validation) and by ``ilora-export verify``. Prompts are built
from the model's own catalogue and templates (left-padded batch of several history lengths), so the
comparison covers prompt assembly, past length 0 and past > 0 exactly as evaluation uses them.
"""

from __future__ import annotations

import numpy as np

from ilora_export.errors import ValidationError
from ilora_export.runtime.backend import Backend
from ilora_export.runtime.generator import Decoding, PromptAssets, prompt_inputs


def sample_rows(catalogue, state_size: int, *, rows: int = 3, candidates: int = 20, seed: int = 0):
    """(seq, len_seq, candidates) triples with distinct history lengths, padded with the catalogue's pad id."""
    rng = np.random.default_rng(seed)
    n = catalogue.num_items
    out = []
    for i in range(rows):
        length = max(1, min(state_size, 3 + (i * (state_size - 3)) // max(rows - 1, 1)))
        history = rng.choice(n, size=length, replace=length > n).tolist()
        cands = rng.choice(n, size=min(candidates, n), replace=False).tolist()
        out.append((history + [catalogue.pad_id] * (state_size - length), length, cands))
    return out


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).max())


def compare_backends(
    reference: Backend,
    candidate: Backend,
    assets: PromptAssets,
    state_size: int,
    *,
    tolerance: dict,
    decode_steps: int = 3,
    strict_argmax: bool = True,
) -> dict:
    """Run both backends on the same left-padded prompts; raise ValidationError beyond ``tolerance``.

    ``tolerance`` maps "logits", "gate_weights", "item_embeds", "item_scores" to absolute bounds.
    Decode steps feed both backends the reference's greedy tokens, so their inputs stay identical.
    """
    builder = assets.prompt_builder()
    examples = [builder.encode(*row) for row in sample_rows(assets.catalogue, state_size)]
    batch = builder.collate(examples)
    seq, len_seq = batch.seq.numpy(), batch.len_seq.numpy()
    items = np.concatenate([seq, batch.candidates.numpy()], axis=1)
    enc_ref, enc_got = reference.encode(seq, len_seq, items), candidate.encode(seq, len_seq, items)
    report = {
        "rows": len(examples),
        "prompt_tokens": int(batch.input_ids.shape[1]),
        "gate_weights_max_abs": _max_abs(enc_ref.gate_weights, enc_got.gate_weights),
        "item_embeds_max_abs": _max_abs(enc_ref.item_embeds, enc_got.item_embeds),
        "item_scores_max_abs": _max_abs(enc_ref.item_scores, enc_got.item_scores),
    }

    inputs, _ = prompt_inputs(reference, batch, assets.token_ids)  # the reference's prompt feeds both
    ref_decoding, got_decoding = Decoding(reference), Decoding(candidate)
    deltas, agree, total = [], 0, 0
    for _ in range(decode_steps + 1):
        ref = ref_decoding.step(inputs)  # [B, V]
        got = got_decoding.step(inputs.astype(candidate.dtype))  # [B, V]
        deltas.append(_max_abs(ref, got))
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        total += ref.shape[0]
        inputs = ref_decoding.next_inputs(inputs, ref.argmax(-1))
    report |= {
        "prefill_logits_max_abs": deltas[0],
        "decode_logits_max_abs": max(deltas[1:], default=0.0),
        "greedy_token_agreement": agree / total,
        "decode_steps": decode_steps,
    }

    failures = [
        f"{name} max |delta| {report[key]:.3g} > {tolerance[name]:.3g}"
        for name, key in (
            ("gate_weights", "gate_weights_max_abs"),
            ("item_embeds", "item_embeds_max_abs"),
            ("item_scores", "item_scores_max_abs"),
            ("logits", "prefill_logits_max_abs"),
            ("logits", "decode_logits_max_abs"),
        )
        if name in tolerance and report[key] > tolerance[name]
    ]
    if strict_argmax and agree != total:
        failures.append(f"greedy tokens differ ({agree}/{total} equal)")
    if failures:
        raise ValidationError(
            f"{candidate.name} disagrees with {reference.name}: " + "; ".join(failures),
            "the exported graph does not reproduce the model; please report this with manifest.json",
            report,
        )
    return report
