"""Train/test leakage: exact and near-duplicate questions shared by the two splits.

Questions are compared in the form :func:`cleaning.normalise_question` gives them, the same form
the loader's dedup uses (NFKC, case-folded, every run of non-letters/digits one space).

- **Exact**: a test question whose normalised form is a train question's.
- **Near**: any other test question with a train question that (a) has a character 5-gram
  shingle Jaccard similarity >= the threshold and (b) asks about the same things: the two
  questions have the same *content words* (:func:`same_content`).

Rule (b) keeps template siblings apart. "What are the symptoms of Dry eyes ?" and "... of Dry
skin ?" share 85% of their 5-grams but ask about different conditions; "I have felt anxious ..."
and "I have felt sad ..." (same sentence frame, another feeling) likewise. A content word is a
token that is not a stopword (function words, question words, fillers such as ``please``,
``help`` or ``doctor``) and not a *slot*: a number (``34``, ``3rd``), a number word (``two``, ``twice``,
``few``) or a time unit (``weeks``, ``months``, ``ago``). Slots are treated like stopwords
because templated questions that differ only in an age or a duration ("I am 34 ..." vs "I am
45 ...", "for two weeks" vs "for six weeks") ask the same thing. Two content words count as the
same word when one is the other plus ``s``/``es`` (``eye``/``eyes``) or, both being 5 letters or
longer, they are one edit apart (a typo: ``diabetes``/``diabetis``); shorter words must match
exactly (``hip``/``lip``, ``skin``/``shin`` are different words). So a test question is a near
duplicate when its 5-grams are close to a train question's *and* every content word of either
question has its match in the other; word order, stopwords, punctuation, numbers and durations
may differ. Pairs that pass (a) but fail (b) are counted as ``siblings`` (reported, not leaks).

Small splits are compared pair by pair; large ones (over ``BRUTE_FORCE_PAIRS`` pairs) find
candidate pairs with MinHash + banded LSH (64 hashes, 16 bands of 4) and verify each candidate
with the exact Jaccard and the content-word rule, so a reported near duplicate is always a real
one (recall at Jaccard 0.8 is about 99.9%). The Jaccard values of one test question against all
its candidates come from one sparse product (exact counts), and a test question with many
train questions above the threshold (a template family, where LSH finds every pair) is matched
through an index of content-word keys, so a split of near-identical questions no longer takes
time quadratic in its rows in Python.
"""
from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .cleaning import normalise_question

SHINGLE = 5
BRUTE_FORCE_PAIRS = 2_000_000
NUM_HASHES, BANDS = 64, 16
_MERSENNE = (1 << 61) - 1

#: function words, question words, contraction pieces (``don't`` -> ``don t``) and forms of
#: address: never content words
STOPWORDS = frozenset("""
a an the and or but nor if then than so as of at by for with without about against between into onto
through during before after above below to from up down in out on off over under again further once
here there all any both each more most other some such no not only own same too very just also until
while because since though although whether even ever still yet
i me my mine myself we us our ours ourselves you your yours yourself yourselves he him his himself she
her hers herself it its itself they them their theirs themselves this that these those one ones
what which who whom whose when where why how
is are was were be been being am do does did doing done have has had having can could should would will
shall may might must ought need
s t d ll m re ve don doesn didn isn aren wasn weren haven hasn hadn won wouldn shouldn couldn can cannot
please kindly help advise thanks thank hi hello hey dear sir madam doctor doc dr ok okay yes
""".split())

#: number words and durations: slots that templated questions vary without changing the question
SLOTS = frozenset("""
zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen
seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand
half couple few several many twice thrice
first second third fourth fifth sixth seventh eighth ninth tenth
minute minutes hour hours day days week weeks month months year years yr yrs ago
""".split())

_NUMBER = re.compile(r"\d+(?:st|nd|rd|th|s)?")
#: shortest length at which two words one edit apart count as the same word (a typo)
TYPO_MIN_LEN = 5


@dataclass(frozen=True)
class LeakReport:
    test: int  # test questions checked
    exact: int  # test questions whose normalized text is in train
    near: int  # other test questions with a train question at Jaccard >= threshold and the same content words
    threshold: float
    method: str  # "pairwise" or "minhash-lsh"
    # other test questions with a train question at Jaccard >= threshold whose content words
    # differ (template siblings such as "... Dry eyes?" / "... Dry skin?"): not leaks
    siblings: int = 0

    @property
    def leaked(self) -> int:
        return self.exact + self.near

    @property
    def fraction(self) -> float:
        return self.leaked / self.test if self.test else 0.0


def normalize_for_leak(text: str) -> str:
    """The leak check's form of a question: :func:`cleaning.normalise_question` (the dedup form)."""
    return normalise_question(text)


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


def is_slot(token: str) -> bool:
    """A number (``34``, ``3rd``, ``1990s``), number word or time unit."""
    return token in SLOTS or _NUMBER.fullmatch(token) is not None


def content_words(text: str) -> frozenset[str]:
    """Tokens of the normalised question that are neither stopwords nor slots."""
    return frozenset(t for t in normalize_for_leak(text).split() if t not in STOPWORDS and not is_slot(t))


def _one_edit(a: str, b: str) -> bool:
    """``a`` and ``b`` differ by exactly one insertion, deletion or substitution."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    if len(a) == len(b):
        return a[i + 1 :] == b[i + 1 :]
    return a[i:] == b[i + 1 :]


def same_word(a: str, b: str) -> bool:
    """Equal, a plural (``+s``/``+es``), or a one-edit typo of a word of TYPO_MIN_LEN+ letters."""
    if a == b:
        return True
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    if long_ in (short + "s", short + "es"):
        return True
    return len(short) >= TYPO_MIN_LEN and _one_edit(a, b)


def same_content(a: frozenset[str], b: frozenset[str]) -> bool:
    """Every content word of either question has a :func:`same_word` in the other's."""
    return all(any(same_word(w, v) for v in b) for w in a - b) and all(any(same_word(w, v) for v in a) for w in b - a)


def near_duplicate(a: str, b: str, threshold: float = 0.8) -> bool:
    """The near-duplicate rule for one pair of questions (the module docstring)."""
    return jaccard(shingles(a), shingles(b)) >= threshold and same_content(content_words(a), content_words(b))


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
    signature: np.ndarray = vals.min(axis=1)
    return signature


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


#: a test question with more train questions than this within the Jaccard threshold is matched
#: through the content-word index (:class:`_WordIndex`) instead of pair by pair
INDEX_FROM = 64


class _Overlap:
    """Shingle overlaps of one test question with many train questions at once: the train
    questions' shingles as a sparse 0/1 matrix, so ``|a & b|`` for a row of candidates is one
    sparse product (exact integer counts: the Jaccard values equal :func:`jaccard`'s)."""

    def __init__(self, train: list[frozenset[str]]):
        from scipy import sparse

        self.vocab: dict[str, int] = {}
        cols = [self.vocab.setdefault(x, len(self.vocab)) for sh in train for x in sh]
        sizes = np.array([len(sh) for sh in train], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(sizes)])
        self.matrix = sparse.csr_matrix((np.ones(len(cols), dtype=np.int32), np.array(cols, dtype=np.int64), indptr),
                                        shape=(len(train), max(1, len(self.vocab))))
        self.sizes = sizes

    def close(self, sh: frozenset[str], rows: np.ndarray, threshold: float) -> np.ndarray:
        """The rows (train indices) whose Jaccard similarity with ``sh`` is >= ``threshold``."""
        if not len(rows):
            return rows
        x = np.zeros(self.matrix.shape[1], dtype=np.int32)
        x[[self.vocab[t] for t in sh if t in self.vocab]] = 1
        if 2 * len(rows) > self.matrix.shape[0]:  # most rows: one product over all, no copy of the matrix
            inter = (self.matrix @ x)[rows].astype(np.int64)
        else:
            inter = (self.matrix[rows] @ x).astype(np.int64)
        union = len(sh) + self.sizes[rows] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            sim = np.where(union > 0, inter / np.maximum(union, 1), 1.0)  # two empty sets: 1.0, as jaccard()
        return rows[sim >= threshold]


def _word_keys(word: str) -> set[str]:
    """Keys shared by every pair of words :func:`same_word` calls the same: the word, its stems
    without ``s``/``es``, and (TYPO_MIN_LEN+ letters) each one-letter deletion (one substitution
    or insertion apart, two words share a deletion)."""
    keys = {word}
    if word.endswith("s"):
        keys.add(word[:-1])
    if word.endswith("es"):
        keys.add(word[:-2])
    if len(word) >= TYPO_MIN_LEN:
        keys.update(word[:i] + word[i + 1:] for i in range(len(word)))
    return keys


class _WordIndex:
    """Which train questions can have the same content words as a given set: a necessary
    condition (every word has a :func:`_word_keys` key in common with some word of the other
    question), verified exactly with :func:`same_content` afterwards."""

    def __init__(self, words: list[frozenset[str]]):
        index: dict[str, set[int]] = defaultdict(set)
        for j, ws in enumerate(words):
            for w in ws:
                for k in _word_keys(w):
                    index[k].add(j)
            if not ws:
                index[""].add(j)  # no content words: matches only another question without any
        self.index = {k: np.array(sorted(v), dtype=np.int64) for k, v in index.items()}
        self.words = words
        self._rows: dict[str, np.ndarray] = {}

    def _rows_of(self, word: str) -> np.ndarray:
        """Train questions with a word sharing a key with ``word`` (sorted; cached per word)."""
        if word not in self._rows:
            keys = [self.index[k] for k in (_word_keys(word) if word else {""}) if k in self.index]
            self._rows[word] = np.unique(np.concatenate(keys)) if keys else np.zeros(0, dtype=np.int64)
        return self._rows[word]

    def matches(self, words: frozenset[str], rows: np.ndarray) -> bool:
        """Some train question among ``rows`` has the same content words as ``words``."""
        pool = rows
        for found in sorted((self._rows_of(w) for w in words or {""}), key=len):  # rarest word first
            pool = np.intersect1d(pool, found, assume_unique=True)
            if not len(pool):
                return False
        return any(same_content(words, self.words[j]) for j in pool.tolist())


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
    everyone = np.arange(len(train), dtype=np.int64)
    pool: dict[int, set[int]] | None = None if method == "pairwise" else _candidates(train_sh, [test_sh[i] for i in rest])
    overlap = _Overlap(train_sh) if rest and train else None
    train_words: dict[int, frozenset[str]] = {}
    word_index: _WordIndex | None = None
    near = siblings = 0
    for k, i in enumerate(rest):
        rows = everyone if pool is None else np.array(sorted(pool.get(k, ())), dtype=np.int64)
        close = overlap.close(test_sh[i], rows, threshold) if overlap is not None else rows[:0]
        if not len(close):
            continue
        words = content_words(test[i])
        if len(close) > INDEX_FROM:  # a template family: match through the content-word index
            if word_index is None:
                word_index = _WordIndex([content_words(q) for q in train])
            same = word_index.matches(words, close)
        else:
            for j in close.tolist():
                if j not in train_words:
                    train_words[j] = content_words(train[j])
            same = any(same_content(words, train_words[j]) for j in close.tolist())
        if same:
            near += 1
        else:
            siblings += 1
    return LeakReport(test=len(test), exact=len(exact_idx), near=near, threshold=threshold, method=method,
                      siblings=siblings)


__all__ = ["STOPWORDS", "SLOTS", "LeakReport", "content_words", "is_slot", "jaccard", "leakage", "minhash_signature",
           "near_duplicate", "normalize_for_leak", "same_content", "same_word", "shingles"]
