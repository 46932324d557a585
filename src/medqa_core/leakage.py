"""Train/test leakage: exact and near-duplicate questions shared by the two splits.

Text is normalized (lower case, punctuation dropped, whitespace collapsed). Exact = equal
normalized text. Near = Jaccard similarity of character 5-gram shingle sets >= a threshold.
Small splits are compared pair by pair; large ones (over ``BRUTE_FORCE_PAIRS`` pairs) find
candidate pairs with MinHash + banded LSH (64 hashes, 16 bands of 4) and verify each candidate
with the exact Jaccard, so a reported near duplicate is always a real one (recall at Jaccard
0.8 is about 99.9%).
"""
from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

SHINGLE = 5
BRUTE_FORCE_PAIRS = 2_000_000
NUM_HASHES, BANDS = 64, 16
_MERSENNE = (1 << 61) - 1


@dataclass(frozen=True)
class LeakReport:
    test: int  # test questions checked
    exact: int  # test questions whose normalized text is in train
    near: int  # other test questions with a train question at Jaccard >= threshold
    threshold: float
    method: str  # "pairwise" or "minhash-lsh"

    @property
    def leaked(self) -> int:
        return self.exact + self.near

    @property
    def fraction(self) -> float:
        return self.leaked / self.test if self.test else 0.0


def normalize_for_leak(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def shingles(text: str, k: int = SHINGLE) -> frozenset[str]:
    """Character k-grams of the normalized text (the whole text when it is shorter than k)."""
    t = normalize_for_leak(text)
    if len(t) <= k:
        return frozenset([t]) if t else frozenset()
    return frozenset(t[i : i + k] for i in range(len(t) - k + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def _shingle_ids(sh: frozenset[str]) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") >> 3 for s in sh],
                    dtype=np.uint64)


def minhash_signature(sh: frozenset[str], seed: int = 0) -> np.ndarray:
    """NUM_HASHES minimum values of universal hashes (a*x + b mod 2^61-1) over the shingle ids."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, _MERSENNE, NUM_HASHES, dtype=np.uint64)
    b = rng.integers(0, _MERSENNE, NUM_HASHES, dtype=np.uint64)
    ids = _shingle_ids(sh) if sh else np.zeros(1, dtype=np.uint64)
    # (a*x + b) mod p with Python ints would be exact; uint64 arithmetic wraps, which is still a
    # fixed pseudo-random permutation family per (a, b): good enough for candidate generation,
    # because every candidate is verified with the exact Jaccard.
    with np.errstate(over="ignore"):
        vals = (ids[None, :] * a[:, None] + b[:, None]) % np.uint64(_MERSENNE)
    return vals.min(axis=1)


def _candidates(train: list[frozenset[str]], test: list[frozenset[str]]) -> dict[int, set[int]]:
    rows = NUM_HASHES // BANDS
    buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)
    for j, sh in enumerate(train):
        sig = minhash_signature(sh)
        for band in range(BANDS):
            buckets[(band, sig[band * rows : (band + 1) * rows].tobytes())].append(j)
    out: dict[int, set[int]] = defaultdict(set)
    for i, sh in enumerate(test):
        sig = minhash_signature(sh)
        for band in range(BANDS):
            out[i].update(buckets.get((band, sig[band * rows : (band + 1) * rows].tobytes()), ()))
    return out


def leakage(train: list[str], test: list[str], threshold: float = 0.8, method: str = "auto") -> LeakReport:
    """Count test questions with an exact or near duplicate among the train questions."""
    train_norm = {normalize_for_leak(q) for q in train}
    exact_idx = {i for i, q in enumerate(test) if normalize_for_leak(q) in train_norm}
    if method == "auto":
        method = "pairwise" if len(train) * len(test) <= BRUTE_FORCE_PAIRS else "minhash-lsh"
    if method not in ("pairwise", "minhash-lsh"):
        raise ValueError(f"leakage method {method!r}: use 'auto', 'pairwise' or 'minhash-lsh'")
    train_sh = [shingles(q) for q in train]
    rest = [i for i in range(len(test)) if i not in exact_idx]
    test_sh = {i: shingles(test[i]) for i in rest}
    near = 0
    if method == "pairwise":
        for i in rest:
            if any(jaccard(test_sh[i], t) >= threshold for t in train_sh):
                near += 1
    else:
        cands = _candidates(train_sh, [test_sh[i] for i in rest])
        for k, i in enumerate(rest):
            if any(jaccard(test_sh[i], train_sh[j]) >= threshold for j in cands.get(k, ())):
                near += 1
    return LeakReport(test=len(test), exact=len(exact_idx), near=near, threshold=threshold, method=method)


__all__ = ["LeakReport", "jaccard", "leakage", "minhash_signature", "normalize_for_leak", "shingles"]
