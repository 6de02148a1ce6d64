import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ilora_export.artifacts import tokens as T
from ilora_export.data.evalset import build_eval_set
from ilora_export.data.llara import load_dataset
from ilora_export.data.prompts import default_templates
from ilora_export.model.ilora import positions_from_mask
from ilora_export.model.prompting import IGNORE_INDEX, PromptBuilder
from tests.factories import make_tiny_ilora


@pytest.fixture(scope="module")
def model(tiny_llama_dir):
    return make_tiny_ilora(tiny_llama_dir)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from ilora_export.data.synthetic import write_synthetic_dataset

    ds = load_dataset(write_synthetic_dataset(tmp_path_factory.mktemp("toy") / "toy"))
    return ds, build_eval_set(ds, "test", seed=0)


def test_added_tokens_follow_the_official_order(model):
    ids = model.token_ids
    base = min(ids.values())
    assert [ids[t] for t in (T.PAD, T.PH, T.HISTORY_EMB, T.CANS_EMB, T.ITEM_EMB)] == list(range(base, base + 5))
    assert model.tokenizer.pad_token == T.PAD
    assert model.llm.get_input_embeddings().weight.shape[0] == len(model.tokenizer)


def test_placeholders_replaced_in_order_like_the_official_loop(model, toy):
    ds, evalset = toy
    enc = PromptBuilder(model.tokenizer, ds.catalogue.title, default_templates())
    rows = evalset.rows[:3]
    batch = enc.collate([enc.encode(r.seq, r.len_seq, r.candidates) for r in rows])
    with torch.no_grad():
        got = model.embed_prompt(batch.input_ids, batch.seq, batch.len_seq, batch.candidates)
        # the official wrap_emb: per row, walk the placeholder positions and assign item embeddings in order
        expected = model.llm.get_input_embeddings()(batch.input_ids).clone()
        hist_id, cans_id = model.token_ids[T.HISTORY_EMB], model.token_ids[T.CANS_EMB]
        for i in range(len(rows)):
            hist = model.projector(model.sasrec.item_embeddings(batch.seq[i]))
            cans = model.projector(model.sasrec.item_embeddings(batch.candidates[i]))
            for idx, e in zip((batch.input_ids[i] == hist_id).nonzero().view(-1), hist[: batch.len_seq[i]]):
                expected[i, idx] = e
            for idx, e in zip((batch.input_ids[i] == cans_id).nonzero().view(-1), cans):
                expected[i, idx] = e
    torch.testing.assert_close(got, expected)
    assert (batch.input_ids == cans_id).sum(1).tolist() == [20, 20, 20]


def test_torch_and_numpy_scatter_give_identical_embeddings(model, toy):
    """The model's prompt embedding (torch) and the generator's (numpy, through the Backend calls) are the same
    arrays, on rows of different history lengths under left padding."""
    from ilora_export.runtime.generator import assemble_prompt
    from ilora_export.runtime.torch_backend import TorchBackend

    ds, evalset = toy
    enc = PromptBuilder(model.tokenizer, ds.catalogue.title, default_templates())
    rows = evalset.rows[:6]
    batch = enc.collate([enc.encode(r.seq, r.len_seq, r.candidates) for r in rows])
    assert len(set(batch.len_seq.tolist())) > 1 and (batch.len_seq < batch.seq.shape[1]).any()
    assert (batch.attention_mask[:, 0] == 0).any() and (batch.attention_mask[:, -1] == 1).all()  # left padding
    with torch.no_grad():
        torch_embeds = model.embed_prompt(batch.input_ids, batch.seq, batch.len_seq, batch.candidates)  # [B, S, H]
        plain = model.llm.get_input_embeddings()(batch.input_ids)  # [B, S, H]
    numpy_embeds, _, _ = assemble_prompt(TorchBackend(model), batch, model.token_ids)  # [B, S, H]
    np.testing.assert_array_equal(numpy_embeds, torch_embeds.numpy())
    placeholder = np.isin(batch.input_ids.numpy(), [model.token_ids[T.HISTORY_EMB], model.token_ids[T.CANS_EMB]])
    changed = (torch_embeds != plain).any(-1).numpy()  # [B, S]
    assert np.array_equal(changed, placeholder)  # every placeholder replaced, nothing else touched


def test_placeholder_count_mismatch_is_refused(model, toy):
    ds, evalset = toy
    enc = PromptBuilder(model.tokenizer, ds.catalogue.title, default_templates())
    r = evalset.rows[0]
    batch = enc.collate([enc.encode(r.seq, r.len_seq, r.candidates)])
    with pytest.raises(ValueError, match="placeholder"):
        model.embed_prompt(batch.input_ids, batch.seq, batch.len_seq - 1, batch.candidates)


def test_loss_covers_answer_tokens_only(model, toy):
    ds, evalset = toy
    enc = PromptBuilder(model.tokenizer, ds.catalogue.title, default_templates())
    rows = evalset.rows[:2]
    exs = [enc.encode(r.seq, r.len_seq, r.candidates, answer=r.target) for r in rows]
    answer = model.tokenizer(ds.catalogue.title(rows[0].target) + "\n", add_special_tokens=False)["input_ids"]
    assert exs[0].labels[-len(answer) :] == answer
    assert set(exs[0].labels[: -len(answer)]) == {IGNORE_INDEX}
    batch = enc.collate(exs, padding_side="right")
    with torch.no_grad():
        out = model(
            batch.input_ids, batch.attention_mask, batch.seq, batch.len_seq, batch.candidates, labels=batch.labels
        )
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
    target = batch.labels[:, 1:].reshape(-1)
    manual = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, manual)


def test_gate_is_per_sequence_and_sums_to_one(model, toy):
    _, evalset = toy
    seq = torch.tensor([r.seq for r in evalset.rows[:4]])
    lens = torch.tensor([r.len_seq for r in evalset.rows[:4]])
    with torch.no_grad():
        g = model.gate_weights(seq, lens)
    assert g.shape == (4, 4)
    torch.testing.assert_close(g.sum(-1), torch.ones(4))
    assert not torch.allclose(g[0], g[1])


def test_left_padding_positions():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert positions_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_gradients_reach_exactly_the_adapter(model, toy):
    """The LM loss trains the expert bank, the gate and the projector; the LLM and SASRec stay frozen."""
    ds, evalset = toy
    enc = PromptBuilder(model.tokenizer, ds.catalogue.title, default_templates())
    rows = evalset.rows[:2]
    batch = enc.collate(
        [enc.encode(r.seq, r.len_seq, r.candidates, answer=r.target) for r in rows], padding_side="right"
    )
    model.zero_grad(set_to_none=True)
    model(
        batch.input_ids, batch.attention_mask, batch.seq, batch.len_seq, batch.candidates, labels=batch.labels
    ).loss.backward()
    trainable = model.trainable_parameters()
    assert trainable and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values()), [
        n for n, p in trainable.items() if p.grad is None or p.grad.abs().sum() == 0
    ]
    assert any(n.startswith("projector.") for n in trainable) and any(n.startswith("gate_net.") for n in trainable)
    assert {n.split(".")[-3] for n in trainable if ".lora_" in n} == {"lora_A", "lora_B"}
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any(n.startswith("sasrec.") for n in frozen) and "llm.model.embed_tokens.weight" in frozen
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    model.zero_grad(set_to_none=True)
