"""Two evaluations of the same rows side by side: how many answers agree, and the metric deltas.

One comparison for every "does the deployed model answer as the trained one" question: ``verify``
(PyTorch checkpoint vs ONNX export) and the quantization gate (fp32 vs quantized export).
"""

from __future__ import annotations

METRICS = ("valid_ratio", "hit_ratio@1_of_valid", "hit_ratio@1_of_total")


def compare_answers(reference, candidate, names: tuple[str, str] = ("reference", "candidate")) -> dict:
    """Compare two :class:`~ilora_export.eval.answers.EvalOutput` of the same evaluation set.

    Returns ``rows``, ``agree``, ``agreement``, ``differ`` (row id and both answers, under ``names``),
    each side's metrics under its name, and the HitRatio@1 (of total) and ValidRatio deltas
    (candidate - reference).
    """
    a, b = reference.records, candidate.records
    if [r["row_id"] for r in a] != [r["row_id"] for r in b]:
        raise ValueError("the two evaluations are not of the same rows")
    differ = [
        {"row_id": x["row_id"], names[0]: x["answer"], names[1]: y["answer"]}
        for x, y in zip(a, b)
        if x["answer"] != y["answer"]
    ]
    rows = len(a)
    return {
        "rows": rows,
        "agree": rows - len(differ),
        "agreement": (rows - len(differ)) / rows if rows else 1.0,
        "differ": differ,
        names[0]: {k: reference.summary[k] for k in METRICS},
        names[1]: {k: candidate.summary[k] for k in METRICS},
        "hit_ratio@1_delta": candidate.summary["hit_ratio@1_of_total"] - reference.summary["hit_ratio@1_of_total"],
        "valid_ratio_delta": candidate.summary["valid_ratio"] - reference.summary["valid_ratio"],
    }
