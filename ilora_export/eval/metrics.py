"""HitRatio@1 / ValidRatio exactly as the official evaluation computes them.

Lower-case and strip the answer and every title. An answer is *valid* when exactly one candidate title
occurs in it as a substring; it is *correct* when that title is the target's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Judgement:
    valid: bool
    correct: bool
    matched: str | None  # the one candidate title found, when valid


def judge(answer: str, target_title: str, candidate_titles: list[str]) -> Judgement:
    generated = answer.strip().lower().strip()
    target = target_title.strip().lower().strip()
    found = [c for c in (t.strip().lower().strip() for t in candidate_titles) if c in generated]
    if len(found) != 1:
        return Judgement(False, False, None)
    return Judgement(True, found[0] == target, found[0])


def summarize(judgements: list[Judgement]) -> dict:
    """ValidRatio, HitRatio@1 as correct/valid (official code) and correct/total (published tables)."""
    total = len(judgements)
    valid = sum(j.valid for j in judgements)
    correct = sum(j.correct for j in judgements)
    return {
        "rows": total,
        "valid": valid,
        "correct": correct,
        "valid_ratio": valid / total if total else 0.0,
        "hit_ratio@1_of_valid": correct / valid if valid else 0.0,
        "hit_ratio@1_of_total": correct / total if total else 0.0,
    }
