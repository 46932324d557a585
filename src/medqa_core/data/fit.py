"""Does a model fit the data? Tokenizer coverage, sequence lengths, and findings for ``init``.

``medqa-bench init`` asks these before it writes a profile: can the model's tokenizer represent
the user's text (:func:`tokenizer_coverage`), do the length settings fit the data and the model's
positions (:func:`length_fit`), and what is wrong, with the numbers (:func:`assess`). Pure
functions on a loaded tokenizer and strings; nothing here trains, generates or prints.

Words are runs of letters (``WORD``): digits and punctuation separate words and are not
counted, since byte-level tokenizers such as SmolLM2's split numbers into single digits on
purpose. A token counts for every word its character span overlaps (a leading space belongs to
the word after it, so ``Ġ``/``▁`` pieces are counted), which needs a fast tokenizer's offsets.

Measurements behind the thresholds (``tokenizer_coverage`` with its default sample; "own 24":
the 24 patient-information sentences written for ``tests/integration/test_fit.py``; "medquad": the dev and
held-out CSVs in ``realdata/``, 300 rows each, questions and answers; "jargon": 10 sentences
dense with drug and disease names; tokens/word over all words, then over words of <= 8 letters,
and the share of those split in >= 2 pieces)::

    tokenizer                          text               tok/word  >=3 pieces  short tok/word  short split
    tiny fixtures (BPE 2048, bytes)    fixture QA rows      1.10       3.0%         1.08           5.0%
                                       fixture corpus       1.14       3.7%         1.11           7.6%
                                       own 24               1.95      28.5%         1.61          31.3%
                                       medquad dev/held     2.11/2.12 32%           1.76/1.77     37%/38%
                                       jargon               4.23      61.7%         1.70          30.0%
    SmolLM2-135M (byte-level BPE)      fixture QA rows      1.03       0.5%         1.02           1.7%
                                       own 24               1.13       3.5%         1.05           3.5%
                                       medquad dev/held     1.12/1.12  3.1%         1.06/1.05      4.4%/4.2%
                                       jargon               2.21      34.0%         1.13           7.5%
    all-MiniLM-L6-v2 (WordPiece)       fixture QA rows      1.09       2.3%         1.04           3.1%
                                       own 24               1.25       6.9%         1.07           5.2%
                                       medquad dev/held     1.20/1.19  5.8%/5.4%    1.08/1.08      5.7%/5.6%
                                       jargon               2.67      43.6%         1.20          12.5%

So tokens per word over all words does not separate a model that cannot represent the text from
a pretrained one on jargon-dense text (tiny on plain text 1.95, SmolLM2 on jargon 2.21); over
everyday words (<= 8 letters) it does: pretrained <= 1.20 everywhere, the tiny tokenizer 1.08-1.11
on the text it was trained on and 1.61-1.77 on real text. The error threshold is
``MAX_SHORT_TOKENS_PER_WORD = 1.35``, between the two, judged only with >= ``MIN_WORDS`` short
words. The all-word numbers are reported in the message.

Unknown tokens and byte fallback (none of the three above produce either on English text):
MiniLM maps 0.0% of the words of every English sample to [UNK]; a 2000-piece BPE learned on the
fixture corpus without byte fallback gives 0.04% (fixture) and 0.23% (own 24) unknown words but
36% on German/French sentences, so ``MAX_UNKNOWN_SHARE = 0.02``. The same BPE with SentencePiece
byte fallback (``<0x..>`` pieces) gives 0.03% (fixture) and 0.11% (own 24) byte pieces among word
tokens, 17.5% on German/French and 91% on Greek, so ``MAX_BYTE_FALLBACK_SHARE = 0.05``.

Lengths, for scale (prompts from ``prompts.build_prompt``: the plain layout for the tiny
tokenizer, the chat template for SmolLM2; medquad dev/held-out): the tiny tokenizer's pair
tokens p50 293/299, p90 477/511 (``max_length`` 128 cuts 92%/95%, and its 256 positions cannot
hold p90); SmolLM2's p50 194/195, p90 297/317 (128 cuts 80%/82%).
"""
from __future__ import annotations

import bisect
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np

from ..errors import ConfigError

# A word: a run of letters (digits, underscores and punctuation separate words and are not
# counted: byte-level tokenizers such as SmolLM2's split numbers into single digits on purpose).
WORD = re.compile(r"[^\W\d_]+")
BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")

DEFAULT_SAMPLE = 2000  # texts measured by tokenizer_coverage (deterministic sample)
SAMPLE_SEED = 0

FRAGMENT_PIECES = 3  # a word in this many tokens or more counts as fragmented
SHORT_WORD = 8  # letters: words this long or shorter are everyday words (the judged measure)
MIN_WORDS = 50  # fewer short words than this: too few to judge the tokenizer

# Thresholds (errors); the measurements behind them are in the module docstring.
MAX_SHORT_TOKENS_PER_WORD = 1.35  # mean tokens of words of <= SHORT_WORD letters
MAX_UNKNOWN_SHARE = 0.02  # share of words holding an unknown token
MAX_BYTE_FALLBACK_SHARE = 0.05  # share of word tokens that are <0x..> byte pieces
PRETRAINED_HINT = "use a pretrained model (e.g. --model smollm2)"
# Warnings
MAX_CUT_SHARE = 0.10  # training pairs longer than max_length
MAX_LONG_ANSWER_SHARE = 0.10  # reference answers longer than max_new_tokens

LENGTH_STEP = 32  # suggested max_length is a multiple of this
NEW_TOKENS_STEP = 16  # suggested max_new_tokens is a multiple of this
QUANTILE_METHOD: Final = "inverted_cdf"  # observed lengths; p90 is the smallest with <= 10% of values above


@dataclass(frozen=True)
class Coverage:
    """How well a tokenizer represents the words of some texts."""

    texts: int  # texts measured (after sampling)
    words: int  # letter runs in them
    tokens_per_word: float  # mean number of tokens overlapping a word
    fragmented_share: float  # share of words split into >= FRAGMENT_PIECES tokens
    unknown_share: float  # share of words with at least one unknown token
    byte_fallback_share: float  # share of the words' tokens that are <0x..> byte pieces
    short_words: int  # words of <= SHORT_WORD letters
    short_tokens_per_word: float  # mean tokens of those (robust to jargon: the judged measure)
    short_split_share: float  # share of those split into >= 2 tokens


@dataclass(frozen=True)
class Quantiles:
    p50: int
    p90: int
    p99: int
    max: int

    @classmethod
    def of(cls, lengths: Sequence[int]) -> Quantiles:
        if not len(lengths):
            return cls(0, 0, 0, 0)
        arr = np.asarray(lengths)
        q = np.quantile(arr, [0.5, 0.9, 0.99], method=QUANTILE_METHOD)
        return cls(int(q[0]), int(q[1]), int(q[2]), int(arr.max()))


@dataclass(frozen=True)
class LengthFit:
    """Token lengths of the training pairs and answers against a profile's length settings."""

    n: int  # pairs measured
    pair: Quantiles  # prompt + answer + EOS, as training sees them
    prompt: Quantiles  # prompt alone, as generation sees it
    answer: Quantiles  # answer alone (no special tokens)
    max_length: int
    max_new_tokens: int
    max_positions: int
    cut_share: float  # pairs longer than max_length (truncated in training)
    long_answer_share: float  # answers longer than max_new_tokens (cut in generation)
    max_length_over_positions: bool  # max_length > max_positions
    generation_over_positions: bool  # prompt p90 + max_new_tokens > max_positions
    suggested_max_length: int  # multiple of 32 >= pair p90, capped at max_positions
    suggested_max_new_tokens: int  # multiple of 16 >= answer p90, capped at max_positions - prompt p90
    suggested_cut_share: float  # pairs still cut at suggested_max_length
    suggested_long_answer_share: float  # answers still cut at suggested_max_new_tokens


@dataclass(frozen=True)
class Finding:
    level: Literal["error", "warning"]
    code: str
    message: str


def _sample(texts: Sequence[str], sample: int | None, seed: int) -> list[str]:
    items = [t for t in texts if isinstance(t, str) and t.strip()]
    if sample is None or len(items) <= sample:
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), sample))
    return [items[i] for i in keep]


def _word_spans(text: str) -> list[tuple[int, int]]:
    """Letter runs, each widened by one leading space when it follows one (a byte-level token
    such as ``Ġ`` or SentencePiece's ``▁`` then belongs to the word it starts)."""
    spans = []
    for m in WORD.finditer(text):
        start = m.start() - 1 if m.start() > 0 and text[m.start() - 1] == " " else m.start()
        spans.append((start, m.end()))
    return spans


def _tokens_per_word(text: str, offsets: Sequence[tuple[int, int]]) -> list[list[int]]:
    """For each word of ``text``, the indices of the tokens whose character span overlaps it."""
    spans = _word_spans(text)
    out: list[list[int]] = [[] for _ in spans]
    if not spans:
        return out
    starts = [s for s, _ in spans]
    for ti, (s, e) in enumerate(offsets):
        if e <= s:
            continue
        wi = max(0, bisect.bisect_right(starts, s) - 1)
        while wi < len(spans) and spans[wi][0] < e:
            ws, we = spans[wi]
            if s < we and ws < e:
                out[wi].append(ti)
            wi += 1
    return out


def tokenizer_coverage(tokenizer: Any, texts: Sequence[str], *, sample: int | None = DEFAULT_SAMPLE,
                       seed: int = SAMPLE_SEED) -> Coverage:
    """Measure how ``tokenizer`` splits the words of ``texts`` (at most ``sample`` of them,
    drawn with a fixed seed). Needs a fast (Rust) tokenizer for character offsets.

    >>> tokenizer_coverage(tok, ["The patient has hypertension."]).tokens_per_word  # doctest: +SKIP
    1.0
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"tokenizer {type(tokenizer).__name__}: coverage needs a fast tokenizer "
                          "(character offsets); load it with use_fast=True")
    chosen = _sample(texts, sample, seed)
    unk = getattr(tokenizer, "unk_token_id", None)
    words = pieces = fragmented = unknown = byte_pieces = short = short_pieces = short_split = 0
    if chosen:
        enc = tokenizer(chosen, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        for text, ids, offsets in zip(chosen, enc["input_ids"], enc["offset_mapping"]):
            toks = tokenizer.convert_ids_to_tokens(ids)
            for m, members in zip(WORD.finditer(text), _tokens_per_word(text, offsets)):
                n = len(members)
                words += 1
                pieces += n
                fragmented += n >= FRAGMENT_PIECES
                unknown += unk is not None and any(ids[i] == unk for i in members)
                byte_pieces += sum(1 for i in members if BYTE_PIECE.fullmatch(str(toks[i])))
                if m.end() - m.start() <= SHORT_WORD:
                    short += 1
                    short_pieces += n
                    short_split += n >= 2
    return Coverage(
        texts=len(chosen),
        words=words,
        tokens_per_word=pieces / words if words else 0.0,
        fragmented_share=fragmented / words if words else 0.0,
        unknown_share=unknown / words if words else 0.0,
        byte_fallback_share=byte_pieces / pieces if pieces else 0.0,
        short_words=short,
        short_tokens_per_word=short_pieces / short if short else 0.0,
        short_split_share=short_split / short if short else 0.0,
    )


def _ceil_to(x: int, step: int) -> int:
    return max(step, math.ceil(x / step) * step)


def _lengths(tokenizer: Any, texts: Sequence[str], special: bool) -> list[int]:
    if not texts:
        return []
    enc = tokenizer(list(texts), add_special_tokens=special, verbose=False)
    return [len(ids) for ids in enc["input_ids"]]


def length_fit(tokenizer: Any, prompts: Sequence[str], answers: Sequence[str], *, max_length: int,
               max_new_tokens: int, max_positions: int) -> LengthFit:
    """Token lengths of prompt/answer pairs against ``max_length`` (training), ``max_new_tokens``
    (generation) and the model's ``max_positions``.

    ``prompts`` are the texts before the answer as the model sees them (``prompts.build_prompt``)
    and ``answers`` the completions (with the plain layout's leading space). A pair is tokenized as
    prompt + answer with the tokenizer's special tokens, plus one EOS (as ``train.lean.encode_rows``);
    a prompt with special tokens; an answer without.
    """
    if len(prompts) != len(answers):
        raise ConfigError(f"length_fit: {len(prompts)} prompts but {len(answers)} answers")
    for name, value in (("max_length", max_length), ("max_new_tokens", max_new_tokens),
                        ("max_positions", max_positions)):
        if value < 1:
            raise ConfigError(f"length_fit: {name} = {value}; must be a positive number of tokens")
    eos = 1 if getattr(tokenizer, "eos_token", None) else 0
    pair_len = [n + eos for n in _lengths(tokenizer, [p + a for p, a in zip(prompts, answers)], True)]
    prompt_len = _lengths(tokenizer, prompts, True)
    answer_len = _lengths(tokenizer, answers, False)
    pair, prompt, answer = Quantiles.of(pair_len), Quantiles.of(prompt_len), Quantiles.of(answer_len)
    n = len(pair_len)
    # room left for generation after a p90 prompt; kept a multiple of 16 when it is at least 16
    new_cap = max_positions - prompt.p90
    new_tokens = max(0, min(_ceil_to(answer.p90, NEW_TOKENS_STEP), new_cap))
    if new_tokens >= NEW_TOKENS_STEP:
        new_tokens -= new_tokens % NEW_TOKENS_STEP
    length = min(_ceil_to(pair.p90, LENGTH_STEP), max_positions)
    return LengthFit(
        n=n, pair=pair, prompt=prompt, answer=answer,
        max_length=max_length, max_new_tokens=max_new_tokens, max_positions=max_positions,
        cut_share=_share_over(pair_len, max_length),
        long_answer_share=_share_over(answer_len, max_new_tokens),
        max_length_over_positions=max_length > max_positions,
        generation_over_positions=prompt.p90 + max_new_tokens > max_positions,
        suggested_max_length=length,
        suggested_max_new_tokens=new_tokens,
        suggested_cut_share=_share_over(pair_len, length),
        suggested_long_answer_share=_share_over(answer_len, new_tokens),
    )


def _share_over(lengths: Sequence[int], limit: int) -> float:
    return sum(x > limit for x in lengths) / len(lengths) if len(lengths) else 0.0


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def assess(coverage: Coverage | None, fit: LengthFit | None) -> list[Finding]:
    """Errors (the model cannot represent or hold the data) and warnings (settings cut data),
    each a one-line message with the numbers behind it. Either argument may be None."""
    out: list[Finding] = []
    if coverage is not None and coverage.short_words >= MIN_WORDS:
        c = coverage
        if c.short_tokens_per_word > MAX_SHORT_TOKENS_PER_WORD:
            out.append(Finding("error", "tokenizer-fragments",
                f"tokenizer splits real words into fragments: {c.tokens_per_word:.1f} tokens/word, "
                f"{_pct(c.fragmented_share)} of words in >= {FRAGMENT_PIECES} pieces, even words of <= {SHORT_WORD} "
                f"letters {c.short_tokens_per_word:.2f} tokens/word ({_pct(c.short_split_share)} split; a pretrained "
                f"tokenizer gives <= 1.2, limit {MAX_SHORT_TOKENS_PER_WORD}): the model cannot represent this text; "
                + PRETRAINED_HINT))
        if c.unknown_share > MAX_UNKNOWN_SHARE:
            out.append(Finding("error", "tokenizer-unknown",
                f"tokenizer maps {_pct(c.unknown_share)} of {c.words} words to its unknown token "
                f"(limit {_pct(MAX_UNKNOWN_SHARE)}): the model cannot see them; " + PRETRAINED_HINT
                + " whose vocabulary covers this text"))
        if c.byte_fallback_share > MAX_BYTE_FALLBACK_SHARE:
            out.append(Finding("error", "tokenizer-bytes",
                f"{_pct(c.byte_fallback_share)} of word tokens are byte-fallback pieces <0x..> "
                f"(limit {_pct(MAX_BYTE_FALLBACK_SHARE)}): the vocabulary does not cover this text; "
                + PRETRAINED_HINT + " whose vocabulary covers it"))
    if fit is not None and fit.n:
        f = fit
        if f.generation_over_positions:
            out.append(Finding("error", "generation-over-positions",
                f"prompt p90 {f.prompt.p90} + max_new_tokens {f.max_new_tokens} = "
                f"{f.prompt.p90 + f.max_new_tokens} tokens > the model's {f.max_positions} positions; "
                f"set max_new_tokens <= {max(0, f.max_positions - f.prompt.p90)} "
                f"(suggested {f.suggested_max_new_tokens}) or use a model with more positions"))
        if f.max_length_over_positions:
            out.append(Finding("error", "max-length-over-positions",
                f"max_length {f.max_length} > the model's {f.max_positions} positions; "
                f"set max_length = {f.suggested_max_length}{_still(f.suggested_cut_share, f.max_positions)}"))
        if f.cut_share > MAX_CUT_SHARE:
            out.append(Finding("warning", "pairs-cut",
                f"max_length {f.max_length} cuts {_pct(f.cut_share)} of training pairs (pair tokens "
                f"p50 {f.pair.p50}, p90 {f.pair.p90}, max {f.pair.max}); "
                f"set max_length = {f.suggested_max_length}{_still(f.suggested_cut_share, f.max_positions)}"))
        if f.long_answer_share > MAX_LONG_ANSWER_SHARE:
            out.append(Finding("warning", "answers-cut",
                f"max_new_tokens {f.max_new_tokens} is shorter than {_pct(f.long_answer_share)} of reference "
                f"answers (answer tokens p50 {f.answer.p50}, p90 {f.answer.p90}, max {f.answer.max}); "
                f"set max_new_tokens = {f.suggested_max_new_tokens}"
                f"{_still(f.suggested_long_answer_share, f.max_positions)}"))
    return out


def _still(share: float, positions: int) -> str:
    """What a capped suggestion still cuts, when that is over the warning threshold."""
    if share <= MAX_CUT_SHARE:
        return ""
    return f" (which still cuts {_pct(share)}: the model's {positions} positions are too few for this data)"
