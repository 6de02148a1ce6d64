from ilora_export.eval.metrics import judge, summarize

CANS = ["Morcheeba", "Enigma", "Café Del Mar", "The Cure", "Cure"]


def test_exactly_one_candidate_substring_is_valid():
    j = judge("  enigma\n", "Enigma", CANS)
    assert j.valid and j.correct and j.matched == "enigma"


def test_wrong_but_valid_answer():
    j = judge("I pick Morcheeba", "Enigma", CANS)
    assert j.valid and not j.correct


def test_two_candidates_in_answer_is_invalid():
    # "the cure" contains "cure": two candidates match -> invalid, as in the official code
    assert not judge("The Cure", "The Cure", CANS).valid
    assert not judge("Enigma or Morcheeba", "Enigma", CANS).valid


def test_no_candidate_is_invalid_and_matching_is_case_insensitive():
    assert not judge("Radiohead", "Enigma", CANS).valid
    assert judge("CAFÉ DEL MAR", "Café Del Mar", CANS).correct


def test_summary_reports_both_hit_ratios():
    js = [
        judge("Enigma", "Enigma", CANS),
        judge("Morcheeba", "Enigma", CANS),
        judge("zzz", "Enigma", CANS),
        judge("Enigma", "Enigma", CANS),
    ]
    s = summarize(js)
    assert (s["rows"], s["valid"], s["correct"]) == (4, 3, 2)
    assert s["valid_ratio"] == 0.75
    assert s["hit_ratio@1_of_valid"] == 2 / 3
    assert s["hit_ratio@1_of_total"] == 0.5


def test_empty_summary_has_no_division_error():
    assert summarize([])["valid_ratio"] == 0.0
