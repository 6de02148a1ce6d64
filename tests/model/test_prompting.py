"""The prompt builder: placeholder tokens, titles in order, padding, answer labels, template choice."""

import numpy as np
import pytest
import torch

from ilora_export.artifacts import tokens as T
from ilora_export.artifacts.tokens import placeholder_slots
from ilora_export.data.evalset import build_eval_set
from ilora_export.data.llara import load_dataset
from ilora_export.data.prompts import CANS_SLOT, HISTORY_SLOT, PromptTemplates, default_templates
from ilora_export.model.prompting import IGNORE_INDEX, PromptBuilder
from tests.factories import make_tiny_ilora


@pytest.fixture(scope="module")
def setup(tiny_llama_dir, toy_data_dir):
    """(tokenizer with the iLoRA tokens, catalogue, builder over the default templates, test rows)."""
    tokenizer = make_tiny_ilora(tiny_llama_dir).tokenizer
    dataset = load_dataset(toy_data_dir)
    builder = PromptBuilder(tokenizer, dataset.catalogue.title, default_templates())
    rows = build_eval_set(dataset, "test", seed=0).rows
    return tokenizer, dataset.catalogue, builder, rows


def _titles(catalogue, ids) -> list[str]:
    return [catalogue.title(i) for i in ids]


def test_one_placeholder_per_history_item_and_per_candidate(setup):
    tokenizer, _, builder, rows = setup
    hist, cans = (tokenizer.convert_tokens_to_ids(t) for t in (T.HISTORY_EMB, T.CANS_EMB))
    assert any(r.len_seq < len(r.seq) for r in rows)  # padded histories: the padding is not rendered
    for r in rows:
        ids = builder.encode(r.seq, r.len_seq, r.candidates).input_ids
        assert ids.count(hist) == r.len_seq
        assert ids.count(cans) == len(r.candidates) == 20


def test_titles_appear_in_the_prompt_in_order(setup):
    tokenizer, catalogue, builder, rows = setup
    template = default_templates().templates[0]
    for r in rows[:4]:
        history, candidates = _titles(catalogue, r.seq[: r.len_seq]), _titles(catalogue, r.candidates)
        expected = template.replace(HISTORY_SLOT, ", ".join(f"{t} {T.HISTORY_EMB}" for t in history)).replace(
            CANS_SLOT, ", ".join(f"{t} {T.CANS_EMB}" for t in candidates)
        )
        assert builder.text(r.seq, r.len_seq, r.candidates) == expected
        decoded = tokenizer.decode(builder.encode(r.seq, r.len_seq, r.candidates).input_ids)
        assert decoded == expected  # the tokens hold exactly that text
        at = [decoded.index(f"{t} {T.HISTORY_EMB}") for t in history]
        at += [decoded.index(f"{t} {T.CANS_EMB}") for t in candidates]
        assert at == sorted(at) and len(set(at)) == len(at)


def test_titles_from_a_mapping_or_a_function_give_the_same_tokens(setup):
    tokenizer, catalogue, builder, rows = setup
    mapping = {i: catalogue.title(i) for i in range(catalogue.num_items)}
    by_dict = PromptBuilder(tokenizer, mapping, default_templates())
    r = rows[0]
    assert by_dict.encode(r.seq, r.len_seq, r.candidates) == builder.encode(r.seq, r.len_seq, r.candidates)


def test_left_and_right_padding_hold_the_same_real_tokens(setup):
    tokenizer, _, builder, rows = setup
    examples = [builder.encode(r.seq, r.len_seq, r.candidates, answer=r.target) for r in rows[:5]]
    lengths = [len(e.input_ids) for e in examples]
    assert len(set(lengths)) > 1, "the batch must need padding"
    left, right = builder.collate(examples), builder.collate(examples, padding_side="right")
    width = max(lengths)
    assert left.input_ids.shape == right.input_ids.shape == (5, width)
    pad = tokenizer.convert_tokens_to_ids(T.PAD)
    assert tokenizer.pad_token_id == pad
    for b, e in enumerate(examples):
        n = width - len(e.input_ids)
        assert left.attention_mask[b].tolist() == [0] * n + [1] * len(e.input_ids)
        assert right.attention_mask[b].tolist() == [1] * len(e.input_ids) + [0] * n
        for batch in (left, right):
            real = batch.attention_mask[b].bool()
            assert batch.input_ids[b][real].tolist() == e.input_ids
            assert batch.labels[b][real].tolist() == e.labels
            assert (batch.input_ids[b][~real] == pad).all() and (batch.labels[b][~real] == IGNORE_INDEX).all()
    for name in ("seq", "len_seq", "candidates"):
        assert torch.equal(getattr(left, name), getattr(right, name))
    assert left.seq.tolist() == [list(r.seq) for r in rows[:5]]
    assert left.len_seq.tolist() == [r.len_seq for r in rows[:5]]
    assert left.candidates.tolist() == [list(r.candidates) for r in rows[:5]]


def test_prompts_without_answers_collate_without_labels(setup):
    _, _, builder, rows = setup
    batch = builder.collate([builder.encode(r.seq, r.len_seq, r.candidates) for r in rows[:3]])
    assert batch.labels is None
    assert batch.input_ids.dtype == batch.attention_mask.dtype == torch.long


def test_labels_keep_only_the_answer_and_its_newline(setup):
    tokenizer, catalogue, builder, rows = setup
    for r in rows[:4]:
        prompt = builder.encode(r.seq, r.len_seq, r.candidates).input_ids
        ex = builder.encode(r.seq, r.len_seq, r.candidates, answer=r.target)
        k = len(prompt)
        assert ex.input_ids[:k] == prompt and len(ex.labels) == len(ex.input_ids)
        assert ex.labels[:k] == [IGNORE_INDEX] * k
        answer = ex.labels[k:]
        assert answer == ex.input_ids[k:] and IGNORE_INDEX not in answer
        assert tokenizer.decode(answer) == catalogue.title(r.target) + "\n"  # no EOS: the newline ends it
        assert tokenizer.eos_token_id not in answer


def test_templates_are_chosen_by_index_modulo_their_count(setup):
    tokenizer, catalogue, _, rows = setup
    templates = PromptTemplates((f"A {HISTORY_SLOT} B {CANS_SLOT} is ", f"{CANS_SLOT} then {HISTORY_SLOT}: "), "test")
    builder = PromptBuilder(tokenizer, catalogue.title, templates)
    r = rows[0]
    history = ", ".join(f"{t} {T.HISTORY_EMB}" for t in _titles(catalogue, r.seq[: r.len_seq]))
    candidates = ", ".join(f"{t} {T.CANS_EMB}" for t in _titles(catalogue, r.candidates))
    first, second = f"A {history} B {candidates} is ", f"{candidates} then {history}: "
    texts = [builder.text(r.seq, r.len_seq, r.candidates, template_index=i) for i in range(5)]
    assert texts == [first, second, first, second, first]
    ids = [builder.encode(r.seq, r.len_seq, r.candidates, template_index=i).input_ids for i in (0, 1, 2)]
    assert ids[0] == ids[2] != ids[1]
    assert ids[1] == tokenizer(second)["input_ids"]


def test_placeholder_slots_pair_each_placeholder_with_its_item_in_order():
    ids = {T.HISTORY_EMB: 7, T.CANS_EMB: 8}
    input_ids = np.array(
        [
            [0, 0, 7, 1, 7, 8, 2, 8],  # left-padded: 2 history items, 2 candidates
            [8, 7, 7, 3, 7, 8, 1, 1],
        ]
    )  # a candidate first (another template), 3 history items
    slots = placeholder_slots(input_ids, np.array([2, 3]), 4, 2, ids)  # items [B, 4 + 2]
    assert slots.row.tolist() == [0, 0, 1, 1, 1, 0, 0, 1, 1]
    assert slots.position.tolist() == [2, 4, 1, 2, 4, 5, 7, 0, 5]
    assert slots.item.tolist() == [0, 1, 0, 1, 2, 4, 5, 4, 5]
    for len_seq, n in (([2, 2], 2), ([2, 3], 3), ([2, 5], 2)):
        with pytest.raises(ValueError, match="placeholder"):
            placeholder_slots(input_ids, np.array(len_seq), 4, n, ids)


def test_placeholder_slots_cover_a_left_padded_batch(setup):
    tokenizer, _, builder, rows = setup
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (T.HISTORY_EMB, T.CANS_EMB)}
    batch = builder.collate([builder.encode(r.seq, r.len_seq, r.candidates) for r in rows[:5]])
    input_ids, len_seq = batch.input_ids.numpy(), batch.len_seq.numpy()
    width, n = batch.seq.shape[1], batch.candidates.shape[1]
    slots = placeholder_slots(input_ids, len_seq, width, n, ids)
    for b in range(5):
        mine = slots.row == b
        hist = mine & (slots.item < width)
        # the b-th row's real history items, then its candidates, at its placeholders in prompt order
        assert slots.item[hist].tolist() == list(range(len_seq[b]))
        assert slots.item[mine & ~hist].tolist() == list(range(width, width + n))
        assert (input_ids[b, slots.position[hist]] == ids[T.HISTORY_EMB]).all()
        assert (input_ids[b, slots.position[mine & ~hist]] == ids[T.CANS_EMB]).all()
        assert np.all(np.diff(slots.position[hist]) > 0) and np.all(np.diff(slots.position[mine & ~hist]) > 0)
    assert slots.row.size == len_seq.sum() + 5 * n  # every placeholder, once
