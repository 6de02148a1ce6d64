"""Every backend on the same rows of the same tiny model: PyTorch on the checkpoint, onnxruntime on its export
with the expert bank folded and fused (default), folded only, and bound per call. Each call of the Backend
interface agrees within the contract's tolerance, and the greedy answers are identical."""

import numpy as np
import pytest

from ilora_export.checkpoint import load_checkpoint
from ilora_export.data.evalset import build_eval_set
from ilora_export.data.llara import load_dataset
from ilora_export.runtime.backend import KV_GROWTH
from ilora_export.runtime.generator import StepInputs, assemble_prompt, greedy_generate
from ilora_export.runtime.load import checkpoint_assets, load_export
from ilora_export.runtime.torch_backend import TorchBackend

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[test])")

ORT_MODES = ("fused", "folded", "input")
ROWS = 4


@pytest.fixture(scope="module")
def backends(tiny_export):
    """name -> (backend, prompt assets): "torch" and "ort-<bank mode>" for every mode."""
    from ilora_export.runtime.ort_backend import OrtBackend

    ckpt, export_dir = tiny_export
    loaded = load_checkpoint(ckpt)
    out = {"torch": (TorchBackend(loaded.model), checkpoint_assets(loaded))}
    export = load_export(export_dir)
    for mode in ORT_MODES:
        out[f"ort-{mode}"] = (OrtBackend(export, bank_mode=mode, threads=1), export.assets)
    return out


@pytest.fixture(scope="module")
def info(tiny_export):
    """The export's manifest: its sizes and the tolerance of each output against PyTorch fp32."""
    return load_export(tiny_export[1]).info


@pytest.fixture(scope="module")
def batches(backends, toy_data_dir):
    """name -> the left-padded batch of the first test rows, built with that backend's own assets."""
    rows = build_eval_set(load_dataset(toy_data_dir), "test", seed=0).rows[:ROWS]
    out = {}
    for name, (_, assets) in backends.items():
        builder = assets.prompt_builder()
        out[name] = builder.collate([builder.encode(r.seq, r.len_seq, r.candidates) for r in rows])
    return out


def test_checkpoint_and_export_build_the_same_prompts(batches):
    ref = batches["torch"]
    assert len(set(ref.attention_mask.sum(1).tolist())) > 1  # rows of several lengths: left padding in play
    for name, batch in batches.items():
        for field in ("input_ids", "attention_mask", "seq", "len_seq", "candidates"):
            assert np.array_equal(getattr(batch, field).numpy(), getattr(ref, field).numpy()), (name, field)


def test_encoder_outputs_agree(backends, batches, info):
    b = batches["torch"]
    seq, len_seq = b.seq.numpy(), b.len_seq.numpy()
    items = np.concatenate([seq, b.candidates.numpy()], axis=1)  # [B, L + N], as the generator asks
    ref = backends["torch"][0].encode(seq, len_seq, items)
    shape = info.shape
    assert ref.gate_weights.shape == (ROWS, shape.num_experts)
    assert ref.item_embeds.shape == (ROWS, items.shape[1], shape.hidden_size)
    assert np.allclose(ref.gate_weights.sum(-1), 1.0, atol=1e-5)  # a dense gate: a mixture of the experts
    for name in ("ort-fused", "ort-folded", "ort-input"):
        got = backends[name][0].encode(seq, len_seq, items)
        for field in ("gate_weights", "item_embeds", "item_scores"):
            diff = np.abs(getattr(got, field) - getattr(ref, field)).max()
            assert diff <= info.tolerance[field], (name, field, diff)


def test_token_embeddings_are_the_checkpoint_rows(backends, batches):
    ids = batches["torch"].input_ids.numpy()
    ref = backends["torch"][0].embed(ids)  # [B, S, H]
    for name in ("ort-fused", "ort-folded", "ort-input"):
        assert np.array_equal(backends[name][0].embed(ids), ref), name


def test_prefill_and_decode_logits_agree(backends, batches, info):
    """The same inputs into every backend: the prompt, then tokens the reference picked, for more steps
    than the KV capacity the ORT backends allocate at the prefill (so their cache grows once)."""
    batch = batches["torch"]
    token_ids = backends["torch"][1].token_ids
    steps_n = KV_GROWTH + 3
    logits = {}
    for name, (backend, _) in backends.items():
        embeds, gate, _ = assemble_prompt(backend, batch, token_ids)
        inputs = StepInputs.prefill(embeds, batch.attention_mask.numpy(), gate)
        state, steps, capacities = None, [], set()
        for k in range(steps_n):
            out, state = backend.step(inputs.embeds, inputs.cache_position, inputs.row_start, gate, state)  # [B, V]
            steps.append(out)
            if name != "torch":
                capacities.add(state[0].shape()[2])
            ref_next = logits["torch"][k].argmax(-1) if name != "torch" else out.argmax(-1)  # [B]
            inputs = inputs.then(backend.embed(ref_next[:, None].astype(np.int64)))  # [B, 1, H]
        logits[name] = steps
        if name != "torch":
            prompt = embeds.shape[1]
            assert capacities == {prompt + KV_GROWTH, prompt + KV_GROWTH + 1 + KV_GROWTH}, name  # grown once
    for name in ("ort-fused", "ort-folded", "ort-input"):
        for k, (got, ref) in enumerate(zip(logits[name], logits["torch"])):
            assert got.shape == ref.shape == (ROWS, info.shape.vocab_size)
            diff = np.abs(got - ref).max()
            assert diff <= info.tolerance["logits"], (name, k, diff)


def test_greedy_answers_are_identical(backends, batches):
    answers = {}
    for name, (backend, assets) in backends.items():
        stop = assets.stop_rule()
        gen = greedy_generate(backend, batches[name], stop, assets.token_ids, max_new_tokens=12)
        answers[name] = ([stop.first_line(t) for t in gen.tokens], gen.tokens, gen.item_scores.argmax(-1).tolist())
    texts, tokens, picks = answers["torch"]
    assert len(set(texts)) > 1 and all(texts)  # real, varied answers (the tiny model's bank is random)
    for name in ORT_MODES:
        assert answers[f"ort-{name}"][1] == tokens, name
        assert answers[f"ort-{name}"][0] == texts and answers[f"ort-{name}"][2] == picks, name


@pytest.mark.parametrize("name", ["torch", "ort-fused"])
def test_answers_do_not_depend_on_batch_size_or_composition(backends, toy_data_dir, name):
    """Every row's generated tokens are the same alone (batch 1), in batches of 8 in the set's order (mixed
    prompt lengths, so rows sit beside other rows and under other amounts of left padding) and in batches of
    8 sorted by prompt length (as evaluation buckets them)."""
    backend, assets = backends[name]
    rows = build_eval_set(load_dataset(toy_data_dir), "test", seed=0).rows[:16]
    builder, stop = assets.prompt_builder(), assets.stop_rule()
    examples = [builder.encode(r.seq, r.len_seq, r.candidates) for r in rows]

    def tokens(groups):
        out = {}
        for idx in groups:
            gen = greedy_generate(backend, builder.collate([examples[i] for i in idx]), stop, assets.token_ids, 8)
            out |= dict(zip(idx, gen.tokens))
        return [out[i] for i in range(len(rows))]

    by_length = sorted(range(len(rows)), key=lambda i: len(examples[i].input_ids))
    alone = tokens([[i] for i in range(len(rows))])
    in_order = tokens([list(range(s, min(s + 8, len(rows)))) for s in range(0, len(rows), 8)])
    bucketed = tokens([by_length[s : s + 8] for s in range(0, len(rows), 8)])
    assert len({len(e.input_ids) for e in examples[:8]}) > 1  # the in-order batches do mix prompt lengths
    assert len({tuple(t) for t in alone}) > 1  # varied answers, not one repeated string
    assert in_order == alone and bucketed == alone
