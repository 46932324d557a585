"""Degeneration: answers that loop (greedy decoding repeating one phrase or sentence).

An answer is *degenerate* when some word 4-gram occurs 3 or more times in it. Words are the
``\\w+`` runs of the case-folded answer (punctuation and spacing are ignored) and occurrences
may overlap. A phrase of four or more words said three times, a three-word phrase said four
times, or one word said six times in a row all count; an answer of fewer than 4 words never
does. A case's ``degenerate`` number is the share of its answers that are degenerate (0 to 1).

It is recorded beside the scores (tuned, base and no-question answers), shown in the summary,
and gated on the tuned answers (gate/): like a score against the baseline's K runs, but lower is
better (metrics/registry.py: a rise beyond the band and beyond 0.05 is a regression, a fall beyond
it 'changed'), and against an absolute ceiling that needs no baseline (``gate.MAX_DEGENERATE``,
10% of answers; recording refuses a run at or above it). A loop also costs BERTScore/USE; this
says why, and catches it where the scores move within their band.

Example::

    >>> is_degenerate("Take rest. Take rest and drink fluids. Take rest and drink fluids. Take rest and drink fluids.")
    True
    >>> is_degenerate("Rest and fluids help; see a doctor if the fever lasts more than three days.")
    False
"""
from __future__ import annotations

import re
from collections import Counter

import numpy as np

NGRAM = 4
MIN_REPEATS = 3
NAME = "degenerate"

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The answer's words: ``\\w+`` runs of the case-folded text."""
    return _WORD.findall(text.casefold())


def max_ngram_count(text: str, n: int = NGRAM) -> int:
    """Occurrences of the most frequent word ``n``-gram (overlapping); 0 under ``n`` words."""
    w = words(text)
    if len(w) < n:
        return 0
    return max(Counter(tuple(w[i : i + n]) for i in range(len(w) - n + 1)).values())


def is_degenerate(text: str, n: int = NGRAM, min_repeats: int = MIN_REPEATS) -> bool:
    return max_ngram_count(text, n) >= min_repeats


def flags(answers: list[str], n: int = NGRAM, min_repeats: int = MIN_REPEATS) -> np.ndarray:
    """1.0 for each degenerate answer, 0.0 otherwise (per-example values; their mean is the share)."""
    return np.asarray([float(is_degenerate(a, n, min_repeats)) for a in answers], dtype=np.float64)


def share(answers: list[str], n: int = NGRAM, min_repeats: int = MIN_REPEATS) -> float:
    """Share of ``answers`` that are degenerate (0.0 for no answers)."""
    return float(flags(answers, n, min_repeats).mean()) if answers else 0.0


__all__ = ["MIN_REPEATS", "NAME", "NGRAM", "flags", "is_degenerate", "max_ngram_count", "share", "words"]
