import numpy as np
import pytest
import torch

from ilora_export.data.evalset import build_eval_set
from ilora_export.data.llara import load_dataset
from ilora_export.data.prompts import default_templates
from ilora_export.model.generate import StopRule
from ilora_export.model.prompting import PromptBuilder
from ilora_export.runtime.backend import dense_mask, rotary_positions
from ilora_export.runtime.generator import Decoding, StepInputs, greedy_generate, prompt_inputs
from ilora_export.runtime.torch_backend import TorchBackend
from tests.factories import make_tiny_ilora
from tests.runtime.recording import RecordingBackend


def _generate(model, batch, stop, max_new_tokens):
    return greedy_generate(TorchBackend(model), batch, stop, model.token_ids, max_new_tokens).tokens


@pytest.fixture(scope="module")
def setup(tiny_llama_dir, tmp_path_factory):
    from ilora_export.data.synthetic import write_synthetic_dataset

    ds = load_dataset(write_synthetic_dataset(tmp_path_factory.mktemp("toy") / "toy"))
    model = make_tiny_ilora(tiny_llama_dir)
    enc = PromptBuilder(model.tokenizer, ds.catalogue.title, default_templates())
    evalset = build_eval_set(ds, "test", seed=0)
    examples = [enc.encode(r.seq, r.len_seq, r.candidates) for r in evalset.rows[:6]]
    return model, enc, examples, StopRule(model.tokenizer)


def test_batched_answers_equal_batch_of_one(setup):
    model, enc, examples, stop = setup
    lengths = {len(e.input_ids) for e in examples}
    assert len(lengths) > 1, "the batch must actually need left padding"
    single = [_generate(model, enc.collate([e]), stop, 12)[0] for e in examples]
    batched = _generate(model, enc.collate(examples), stop, 12)
    assert batched == single


def test_kv_cache_decode_equals_full_recompute(setup):
    model, enc, examples, stop = setup
    batch = enc.collate(examples[:2])
    generated = _generate(model, batch, stop, 6)
    # recompute each step without a cache: feed prompt + generated tokens, take argmax of the last position
    for b in range(2):
        row = enc.collate([examples[b]])
        toks = []
        for _ in range(len(generated[b])):
            ids = torch.cat([row.input_ids, torch.tensor([toks], dtype=torch.long)], 1)
            mask = torch.ones_like(ids)
            with torch.no_grad():
                emb = model.embed_prompt(ids, row.seq, row.len_seq, row.candidates)
                with model.expert_gate.use(model.gate_weights(row.seq, row.len_seq)):
                    logits = model.llm(inputs_embeds=emb, attention_mask=mask).logits
            toks.append(int(logits[0, -1].argmax()))
            if stop.is_done(toks):
                break
        assert [t for t in toks if t not in stop.eos_ids] == generated[b]


def test_stop_rule_matches_the_official_first_line(setup):
    model, *_ = setup
    tok = model.tokenizer
    stop = StopRule(tok)
    nl = tok("\n", add_special_tokens=False)["input_ids"]
    word = tok(" Enigma", add_special_tokens=False)["input_ids"]
    # a newline before any text does not stop (the official code strips first)
    assert not stop.is_done(list(nl))
    assert stop.is_done(nl + word + nl)
    full = nl + word + nl + tok("more text", add_special_tokens=False)["input_ids"]
    official = tok.decode(full, skip_special_tokens=True).strip().split("\n")[0]
    assert stop.first_line(nl + word + nl) == official == "Enigma"
    assert stop.is_done(word + [tok.eos_token_id])


def test_step_inputs_grow_one_token_per_row_under_left_padding():
    mask = np.array([[0, 0, 1, 1], [1, 1, 1, 1]])
    embeds, gate = np.zeros((2, 4, 3), np.float32), np.full((2, 2), 0.5, np.float32)
    first = StepInputs.prefill(embeds, mask, gate)
    assert first.cache_position.dtype == first.row_start.dtype == np.int64
    assert first.cache_position.tolist() == [0, 1, 2, 3] and first.row_start.tolist() == [2, 0]
    assert rotary_positions(first.cache_position, first.row_start).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]
    second = first.then(np.ones((2, 1, 3), np.float32))
    third = second.then(np.ones((2, 1, 3), np.float32))
    assert second.cache_position.tolist() == [4] and third.cache_position.tolist() == [5]
    assert dense_mask(third.cache_position, third.row_start).tolist() == [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
    assert rotary_positions(second.cache_position, second.row_start).tolist() == [[2], [4]]
    assert rotary_positions(third.cache_position, third.row_start).tolist() == [[3], [5]]
    assert third.gate_weights is gate and third.row_start is first.row_start
    half = third.astype(np.float16)
    assert half.embeds.dtype == half.gate_weights.dtype == np.float16 and half.cache_position is third.cache_position


def test_step_inputs_refuse_a_batch_that_is_not_left_padded():
    embeds, gate = np.zeros((2, 4, 3), np.float32), np.full((2, 2), 0.5, np.float32)
    with pytest.raises(ValueError, match="left-padded"):
        StepInputs.prefill(embeds, np.array([[1, 1, 0, 0], [1, 1, 1, 1]]), gate)  # right padding
    with pytest.raises(ValueError, match="left-padded"):
        StepInputs.prefill(embeds, np.array([[0, 1, 0, 1], [1, 1, 1, 1]]), gate)  # a hole


def test_cached_decode_logits_equal_a_full_recompute(setup):
    """Each step's logits with the KV cache equal those of one prefill over the prompt and the tokens so far."""
    model, enc, examples, _ = setup
    backend = TorchBackend(model)
    batch = enc.collate(examples[:4])
    inputs, _ = prompt_inputs(backend, batch, model.token_ids)
    decoding = Decoding(backend)
    embeds = [inputs.embeds]  # [B, S, H], then [B, 1, H] per step
    for _ in range(4):
        cached = decoding.step(inputs)  # [B, V]
        mask = dense_mask(inputs.cache_position, inputs.row_start)  # [B, P+S]
        whole = StepInputs.prefill(np.concatenate(embeds, axis=1), mask, inputs.gate_weights)
        np.testing.assert_allclose(Decoding(backend).step(whole), cached, atol=1e-4, rtol=0)
        inputs = decoding.next_inputs(inputs, cached.argmax(-1))
        embeds.append(inputs.embeds)


def test_greedy_generate_decodes_through_the_shared_step(setup):
    model, enc, examples, stop = setup
    batch = enc.collate(examples[:3])
    backend = RecordingBackend(TorchBackend(model))
    gen = greedy_generate(backend, batch, stop, model.token_ids, 5)
    calls = backend.calls
    mask = batch.attention_mask.numpy()
    assert calls[0].state_in is None and calls[0].cache_position.tolist() == list(range(mask.shape[1]))
    assert calls[0].row_start.tolist() == (mask.shape[1] - mask.sum(1)).tolist()
    for k, (before, call) in enumerate(zip(calls, calls[1:]), start=1):
        assert call.state_in is before.state_out  # the cache carried from call to call
        assert call.cache_position.tolist() == [mask.shape[1] - 1 + k]  # the next column
        assert call.row_start.tolist() == calls[0].row_start.tolist()
        positions = rotary_positions(call.cache_position, call.row_start)
        assert positions.tolist() == (mask.sum(1, keepdims=True) - 1 + k).tolist()
        np.testing.assert_array_equal(
            call.embeds,
            model.llm.get_input_embeddings()(torch.from_numpy(before.logits.argmax(-1)[:, None])).detach().numpy(),
        )
    assert len(calls) == 5 or len(calls) == max(len(t) for t in gen.tokens)
    for b, tokens in enumerate(gen.tokens):  # each row's answer: the argmax of each call until its stop
        picked = [int(call.logits[b].argmax()) for call in calls]
        ends = [k + 1 for k in range(len(picked)) if stop.is_done(picked[: k + 1])]
        assert tokens == [t for t in picked[: ends[0] if ends else None] if t not in stop.eos_ids]


def test_decoding_with_torch_logs_no_deprecation(setup, monkeypatch):
    """The cache is read from a model output by its current name: no transformers deprecation per call."""
    import transformers.utils.generic as hf_generic

    said = []
    monkeypatch.setattr(hf_generic.logger, "warning_once", lambda msg, *a, **k: said.append(str(msg)))
    model, enc, examples, stop = setup
    greedy_generate(TorchBackend(model), enc.collate(examples[:2]), stop, model.token_ids, 3)
    assert not [m for m in said if "deprecated" in m]


class _EosFirstBackend:
    """A pure-numpy Backend whose logits rank EOS first at every step, then ``runner_up``: what a model
    that would answer nothing looks like to the generator."""

    name, dtype = "eos-first", np.dtype(np.float32)

    def __init__(self, vocab: int, eos: int, runner_up: int, hidden: int = 4, experts: int = 2):
        self.vocab, self.eos, self.runner_up, self.hidden, self.experts = vocab, eos, runner_up, hidden, experts

    def encode(self, seq, len_seq, items):
        from ilora_export.runtime.backend import Encoded

        b, n = items.shape
        return Encoded(
            np.full((b, self.experts), 1 / self.experts, np.float32),
            np.zeros((b, n, self.hidden), np.float32),
            np.zeros((b, n), np.float32),
        )

    def embed(self, token_ids):
        return np.zeros((*token_ids.shape, self.hidden), np.float32)  # [B, S, H]

    def step(self, embeds, cache_position, row_start, gate_weights, state):
        logits = np.zeros((embeds.shape[0], self.vocab), np.float32)  # [B, V]
        logits[:, self.runner_up] = 5.0
        logits[:, self.eos] = 10.0
        return logits, (state or 0) + 1


@pytest.mark.parametrize("min_new_tokens, answer", [(0, []), (1, ["word"])])
def test_min_new_tokens_bans_eos_at_the_first_step_only(setup, min_new_tokens, answer):
    """As the official generation (min_new_tokens=1): EOS cannot be the first token, so the answer is never
    empty; from the second step EOS stops the row as before. With 0 an answer can be empty."""
    from ilora_export.runtime.generator import PromptAssets

    model, enc, examples, _ = setup
    tok = model.tokenizer
    word = tok(" Enigma", add_special_tokens=False)["input_ids"][0]
    backend = RecordingBackend(_EosFirstBackend(len(tok), tok.eos_token_id, word))
    assets = PromptAssets(tok, None, None, model.token_ids, {tok.eos_token_id}, min_new_tokens=min_new_tokens)
    gen = greedy_generate(backend, enc.collate(examples[:3]), assets.stop_rule(), model.token_ids, 8)
    assert gen.tokens == [[word] if answer else []] * 3
    assert len(backend.calls) == 1 + min_new_tokens  # then EOS, the argmax of the step's logits, ends each row
    assert all(int(call.logits.argmax(-1)[0]) == tok.eos_token_id for call in backend.calls)  # the model's own pick
