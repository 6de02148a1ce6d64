"""Answering rows with a backend: batching, refused ids, devices (``eval.answers``)."""

import pytest
import torch

from ilora_export.checkpoint import load_checkpoint
from ilora_export.data.evalset import build_eval_set
from ilora_export.data.llara import load_dataset
from ilora_export.errors import DataError
from ilora_export.eval.answers import evaluate_model
from tests.factories import make_tiny_ilora


def test_batch_size_does_not_change_answers(tiny_run, tiny_llama_dir, toy_data_dir):
    # the random-bank tiny model answers with varied text (the 6-step run answers mostly nothing)
    from dataclasses import replace

    loaded = replace(load_checkpoint(tiny_run.checkpoint), model=make_tiny_ilora(tiny_llama_dir))
    evalset = build_eval_set(load_dataset(toy_data_dir), "test", seed=0)
    one = evaluate_model(loaded, evalset, batch_size=1, progress=False, max_new_tokens=16)
    many = evaluate_model(loaded, evalset, batch_size=5, progress=False, max_new_tokens=16)
    answers = [r["answer"] for r in one.records]
    assert len(set(answers)) > 1  # real, varied answers, not a trivially equal empty list
    assert answers == [r["answer"] for r in many.records]


def test_eval_set_with_ids_outside_the_catalogue_is_refused(tiny_run, toy_data_dir):
    loaded = load_checkpoint(tiny_run.checkpoint)
    evalset = build_eval_set(load_dataset(toy_data_dir), "test", seed=0)
    row = evalset.rows[0]
    evalset.rows[0] = type(row)(row.row_id, row.seq, row.len_seq, row.target, (*row.candidates[:-1], 999))
    with pytest.raises(DataError, match="item id 999 outside"):
        evaluate_model(loaded, evalset, progress=False)


@pytest.mark.gpu
def test_cuda_answers_match_cpu(tiny_run, toy_data_dir):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    loaded = load_checkpoint(tiny_run.checkpoint)
    evalset = build_eval_set(load_dataset(toy_data_dir), "test", seed=0)
    cpu = evaluate_model(loaded, evalset, progress=False)
    gpu = evaluate_model(loaded, evalset, device="cuda", progress=False)
    assert [r["answer"] for r in gpu.records] == [r["answer"] for r in cpu.records]
