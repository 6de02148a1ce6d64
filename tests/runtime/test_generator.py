import pytest
import torch

from ilora_export.data.evalset import build_eval_set
from ilora_export.data.llara import load_dataset
from ilora_export.data.prompts import default_templates
from ilora_export.model.generate import StopRule
from ilora_export.model.prompting import PromptBuilder
from ilora_export.runtime.generator import greedy_generate
from ilora_export.runtime.torch_backend import TorchBackend
from tests.factories import make_tiny_ilora


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
