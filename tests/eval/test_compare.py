import pytest

from ilora_export.eval.answers import EvalOutput
from ilora_export.eval.compare import compare_answers


def _output(answers, valid_ratio, hit):
    records = [{"row_id": i * 7, "answer": a} for i, a in enumerate(answers)]
    return EvalOutput(
        records, {"valid_ratio": valid_ratio, "hit_ratio@1_of_valid": hit / valid_ratio, "hit_ratio@1_of_total": hit}
    )


def test_counts_agreement_names_the_differing_rows_and_the_deltas():
    ref = _output(["a", "b", "c", "d"], 1.0, 0.5)
    got = _output(["a", "x", "c", "d"], 0.75, 0.25)
    cmp = compare_answers(ref, got, ("torch", "ort"))
    assert (cmp["rows"], cmp["agree"], cmp["agreement"]) == (4, 3, 0.75)
    assert cmp["differ"] == [{"row_id": 7, "torch": "b", "ort": "x"}]
    assert cmp["torch"]["hit_ratio@1_of_total"] == 0.5 and cmp["ort"]["valid_ratio"] == 0.75
    assert (cmp["hit_ratio@1_delta"], cmp["valid_ratio_delta"]) == (-0.25, -0.25)


def test_refuses_evaluations_of_other_rows():
    ref = _output(["a", "b"], 1.0, 0.5)
    other = EvalOutput([{"row_id": 1, "answer": "a"}, {"row_id": 0, "answer": "b"}], ref.summary)
    with pytest.raises(ValueError, match="same rows"):
        compare_answers(ref, other)
