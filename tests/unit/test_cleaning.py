"""Cleaning rules (medqa_core.data.cleaning): one test per rule, on the rule alone and through the
loader, where the per-rule counts land in the load stats; and the linear-time engine that runs the
rules (RULES) against their definition, the plain regexes of cleaning.SPEC (apply_spec)."""
from __future__ import annotations

import gc
import json
import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medqa_core.data._cleaning_engine import ENGINE
from medqa_core.data.cleaning import RULES, SPEC, apply_spec, clean_row
from medqa_core.data.datasets import load_examples
from medqa_core.specs import DatasetSpec


def apply(rule: str, text: str) -> str:
    return RULES[rule].apply(text)


@pytest.mark.parametrize("text, expected", [
    ("Q. What causes dizziness?", "What causes dizziness?"),
    ("Q: Is this normal?", "Is this normal?"),
    ("Question: why do I cough?", "Why do I cough?"),
    ("Quick question about my knee.", "Quick question about my knee."),  # a word starting with Q stays
    ("What is Q. fever?", "What is Q. fever?"),  # only a leading prefix
])
def test_question_prefix(text, expected):
    assert apply("question_prefix", text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Hi doctor, I have a headache.", "I have a headache."),
    ("Hello doctor. my knee hurts.", "My knee hurts."),
    ("Hello, I am 40 and I cough.", "I am 40 and I cough."),
    ("Dear sir, my son has fever.", "My son has fever."),
    ("Hi there! I cannot sleep.", "I cannot sleep."),
    ("Highly itchy rash on my arm.", "Highly itchy rash on my arm."),  # "Hi" inside a word stays
    ("I said hello, then fainted.", "I said hello, then fainted."),
])
def test_question_greeting(text, expected):
    assert apply("question_greeting", text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Hi, thanks for your query. This is gout.", "This is gout."),
    ("Hello, thanks for your query. These symptoms point to gout.", "These symptoms point to gout."),
    ("Hello and welcome to Chat Doctor. Take ibuprofen.", "Take ibuprofen."),
    ("Hi. I have gone through your query. It is migraine.", "It is migraine."),
    ("Thank you for posting your question on our site. Rest well.", "Rest well."),
    ("Dear Mary, this is a cold.", "This is a cold."),
    ("I understand your concern. It is benign.", "It is benign."),
    ("This is gout. Hello to your family.", "This is gout. Hello to your family."),  # not at the start
    ("Thanks to the vaccine, you are protected.", "Thanks to the vaccine, you are protected."),
])
def test_answer_greeting(text, expected):
    assert apply("answer_greeting", text) == expected


@pytest.mark.parametrize("text, expected", [
    ("This is gout. Hope this helps.", "This is gout."),
    ("Take rest. Regards Dr. John Smith", "Take rest."),
    ("Take rest. Thanks and regards, Dr. Ann Lee.", "Take rest."),
    ("Drink water. Hope I have answered your query. Let me know if I can assist you further.", "Drink water."),
    ("Use a cream. Take care.", "Use a cream."),
    ("Use a cream. Wishing you good health.", "Use a cream."),
    ("See a dermatologist. Thanks for using Chat Doctor.", "See a dermatologist."),
    ("Rest. For more information consult a neurologist online --> https://example.org/ask/neuro", "Rest."),
    ("Take care to avoid the sun, it makes the rash worse.", "Take care to avoid the sun, it makes the rash worse."),
])
def test_answer_signoff(text, expected):
    assert apply("answer_signoff", text) == expected


def test_clean_row_counts_each_rule_once_per_changed_row():
    counts: dict[str, int] = {}
    parts, answer = clean_row(["Q. Knee pain?", "Hi doctor, my knee hurts."], "Hi. It is a sprain. Take care.",
                              ("question_prefix", "question_greeting", "answer_greeting", "answer_signoff"), counts)
    assert parts == ["Knee pain?", "My knee hurts."]
    assert answer == "It is a sprain."
    assert counts == {"question_prefix": 1, "question_greeting": 1, "answer_greeting": 1, "answer_signoff": 1}
    parts, answer = clean_row(["Knee pain?"], "It is a sprain.", ("question_prefix", "answer_signoff"), counts)
    assert (parts, answer) == (["Knee pain?"], "It is a sprain.")
    assert counts["question_prefix"] == 1 and counts["answer_signoff"] == 1


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz ,.", min_size=0, max_size=60))
@settings(max_examples=80, deadline=None)
def test_property_rules_are_idempotent(text):
    for rule in RULES.values():
        once = rule.apply(text)
        assert rule.apply(once) == once


# ---------------------------------------------------------------- through the loader, with counts

def write_json(path: Path, rows: list[dict]) -> None:
    path.write_text(json.dumps(rows), encoding="utf-8")


def dspec(**kw) -> DatasetSpec:
    return DatasetSpec(name="hcm", file="d.json", question=("input",), answer="output", **kw)


ROWS = [
    {"input": "Hi doctor, I have a cough.", "output": "Hello, thanks for your query. It is a cold. Hope this helps."},
    {"input": "My toe hurts.", "output": "This is gout. Regards Dr. Ray"},
    {"input": "Hello, my back aches.", "output": "Rest and stretch."},
    {"input": "Hi doctor, is it serious?", "output": "Hi. Hope this helps."},  # nothing left after cleaning
]


@pytest.mark.parametrize("rule, changed", [
    ("question_greeting", 3), ("answer_greeting", 2), ("answer_signoff", 3),
])
def test_each_rule_counted_by_loader(tmp_path, rule, changed):
    write_json(tmp_path / "d.json", ROWS)
    _, stats = load_examples(dspec(clean=(rule,)), tmp_path)
    assert stats.cleaned == {rule: changed}
    assert stats.rows_read == 4


def test_all_rules_and_rows_emptied_by_cleaning_are_dropped(tmp_path):
    write_json(tmp_path / "d.json", ROWS)
    examples, stats = load_examples(dspec(clean=("question_greeting", "answer_greeting", "answer_signoff")), tmp_path)
    assert [(e.question, e.answer) for e in examples] == [
        ("I have a cough.", "It is a cold."), ("My toe hurts.", "This is gout."), ("My back aches.", "Rest and stretch.")]
    assert stats.dropped_empty == 1 and stats.kept == 3
    assert stats.cleaned == {"question_greeting": 3, "answer_greeting": 2, "answer_signoff": 3}


def test_no_rules_means_no_change(tmp_path):
    write_json(tmp_path / "d.json", ROWS)
    examples, stats = load_examples(dspec(), tmp_path)
    assert stats.cleaned == {} and stats.kept == 4
    assert examples[0].answer == ROWS[0]["output"]


def test_cleaning_makes_duplicates_visible(tmp_path):
    rows = [{"input": "Hi doctor, my knee hurts.", "output": "Rest."}, {"input": "Hello, my knee hurts.", "output": "Ice."}]
    write_json(tmp_path / "d.json", rows)
    _, raw = load_examples(dspec(), tmp_path)
    _, cleaned = load_examples(dspec(clean=("question_greeting",)), tmp_path)
    assert raw.dropped_duplicate == 0 and cleaned.dropped_duplicate == 1 and cleaned.kept == 1


@pytest.mark.parametrize("field, cap, dropped", [
    ("max_question_chars", 14, 2), ("max_answer_chars", 13, 1), ("max_answer_chars", 100, 0),
])
def test_length_caps_drop_and_count(tmp_path, field, cap, dropped):
    rows = [{"input": "Short one?", "output": "Short answer."},
            {"input": "A longer question here?", "output": "Ok."},
            {"input": "Another long question?", "output": "A much longer answer text."}]
    write_json(tmp_path / "d.json", rows)
    examples, stats = load_examples(dspec(**{field: cap}), tmp_path)
    assert stats.dropped_too_long == dropped
    assert stats.kept == len(examples) == 3 - dropped
    limit_field = "question" if field == "max_question_chars" else "answer"
    assert all(len(getattr(e, limit_field)) <= cap for e in examples)


# ---------------------------------------------------------------- against the plain-regex definition
# The rules' definition is cleaning.SPEC: plain regular expressions, each applied with
# re.sub(count=1) until the text stops changing (cleaning.apply_spec). Simple, and fine on short
# texts, but quadratic (sign-offs after many newlines) or exponential (greetings with many
# addressees) on adversarial ones; RULES run the engine, which must give the same results.

def test_every_rule_in_the_table_is_implemented_by_the_engine_and_vice_versa():
    assert set(SPEC) == set(ENGINE) == set(RULES)
    for name, spec in SPEC.items():
        assert RULES[name].apply is ENGINE[name], name
        assert (RULES[name].field, RULES[name].doc) == (spec.field, spec.doc), name


def test_the_table_is_well_formed():
    """Each rule rewrites the question or the answer and has patterns; each pattern compiles and
    says in one line what it strips."""
    for name, spec in SPEC.items():
        assert spec.field in ("question", "answer"), name
        assert spec.patterns and spec.doc and "\n" not in spec.doc, name
        for p in spec.patterns:
            re.compile(p.regex, re.IGNORECASE)
            assert p.strips.strip() and "\n" not in p.strips, (name, p.regex)


@pytest.mark.parametrize("rule, text", [
    ("question_greeting", "hi dr a dr. b, z"),  # the regex's first parse, not the longest: "B, z"
    ("question_greeting", "Hello   ,  my knee."),
    ("answer_greeting", "Hi ,\n welcome back to the clinic. Rest."),
    ("answer_greeting", "hii, \u212aeep warm."),  # Kelvin sign: matches "k" case-insensitively
    ("answer_greeting", "Dear Dr. Ann Lee doctor: it is gout."),
    ("answer_signoff", "Rest. consult a doctor online->>"),  # ">+" then "\S+" share the last token
    ("answer_signoff", "Rest. consult a doctor online ->> x"),
    ("answer_signoff", "Rest. For more information consult a neurologist online --> https://x.org/a"),
    ("answer_signoff", "Rest. Take care,\ngood luck and stay well!"),
    ("answer_signoff", "Rest. x take care, good luck"),  # a list that does not start a sentence stays
    ("answer_signoff", "Rest.Dr. John A. Smith ."),
    ("answer_signoff", "Rest. Thanks\nand\nregards, Dr. Ray"),
    ("answer_signoff", "rest and ice. take care."),
    ("answer_signoff", "Rest. Thank you for using Chat Doctor. Wishing you good health!"),
    ("answer_signoff", "Rest? Hope this helps! Hope it helps. Let me know."),
])
def test_rules_match_reference_on_edge_cases(rule, text):
    assert apply(rule, text) == apply_spec(rule, text)


def quoted_examples(strips: str) -> list[str]:
    return re.findall(r"'([^']+)'", strips)


def test_each_pattern_strips_the_examples_its_line_quotes():
    """The table's lines stay true: every pattern quotes examples, and strips each one whole, as
    do its rule by the definition and the engine. The examples join the fragments below, so the
    property tests exercise every pattern."""
    for name, spec in SPEC.items():
        for p in spec.patterns:
            assert quoted_examples(p.strips), (name, p.strips)
            for example in quoted_examples(p.strips):
                assert re.sub(p.regex, "", example, count=1, flags=re.IGNORECASE) == "", (name, example)
                assert apply_spec(name, example) == apply(name, example) == "", (name, example)


def examples_of(*rules: str) -> list[str]:
    return [ex for rule in rules for p in SPEC[rule].patterns for ex in quoted_examples(p.strips)]


_OPENERS = ["Hi", "Hello doctor,", "hi dr. ann lee,", "Dear sir:", "Hii,", "Good morning team!", "Q.", "Question:",
            "Thanks for your query.", "Thank you so much for asking.", "Hello and welcome to Chat Doctor.",
            "I have gone through your query.", "I understand your concern.", "Hi Mary,", "Dear John!", "hey there",
            *examples_of("question_prefix", "question_greeting", "answer_greeting")]
_BODY = ["It is gout.", "rest and ice", "Drink water.", "Take care to avoid sun.", "Is it serious?", "see a dr soon",
         "Thanks to the vaccine, you are fine.", "Hope is good", "all the best tests", "1 tab daily!"]
_SIGNOFFS = ["Hope this helps.", "hope it helps you!", "Regards Dr. John Smith", "Thanks and regards,\nDr. Ann Lee.",
             "With regards", "Dr. Ray", "doctor j.r. smith .", "Let me know if I can assist you further.",
             "Do not hesitate to ask.", "Take care.", "take care of yourself, good luck and get well soon!", "Stay safe",
             "Wishing you good health.", "wish you well", "Thanks for using Chat Doctor.", "Thank you!", "thanks",
             "For more information consult a neurologist online --> https://example.org/ask", "consult an ENT online ->x",
             "Regards, Dr. Ann Lee, MBBS, MD, Consultant Physician, Pune, IN",  # 55 characters after "regards"
             "Warm regards, Dr. Ann Lee, MBBS, MD, Consultant Physician, City Hospital, Pune",  # 66: too many
             *examples_of("answer_signoff")]
_SEPARATORS = [" ", "  ", "\n", "\n\n", ". ", "! ", "? ", ", ", "\t", "", " \n "]
FRAGMENTS = _OPENERS + _BODY + _SIGNOFFS


@st.composite
def normal_texts(draw):
    """Answers and questions as the dumps have them: openers, a body, sign-offs, in varied spacing and case."""
    parts = (draw(st.lists(st.sampled_from(_OPENERS), max_size=3)) + draw(st.lists(st.sampled_from(_BODY), max_size=3))
             + draw(st.lists(st.sampled_from(_SIGNOFFS), max_size=4)))
    if draw(st.booleans()):
        parts = draw(st.permutations(parts))
    text = "".join(draw(st.sampled_from([p, p.lower(), p.upper()])) + draw(st.sampled_from(_SEPARATORS)) for p in parts)
    return draw(st.sampled_from(_SEPARATORS)) + text


@given(normal_texts())
@settings(max_examples=300, deadline=None)
def test_property_rules_match_reference_on_normal_texts(text):
    for rule in RULES:
        assert apply(rule, text) == apply_spec(rule, text), rule


@given(st.text(alphabet="adehiknoprstuy .,!?:\n->'\u212a", max_size=40))
@settings(max_examples=300, deadline=None)
def test_property_rules_match_reference_on_short_random_texts(text):
    for rule in RULES:
        assert apply(rule, text) == apply_spec(rule, text), rule


# ---------------------------------------------------------------- time is linear in the length

def _cpu_seconds(rule: str, text: str, repeats: int = 3) -> float:
    """This thread's CPU seconds for one application, the least of ``repeats`` with the cyclic GC
    off: a process clock also counts torch's OpenMP threads spinning in the same xdist worker, and
    a GC pause or a busy neighbour inflated single timings up to 5x (CI, 2026-12-07)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        best = float("inf")
        for _ in range(repeats):
            start = time.thread_time()
            apply(rule, text)
            best = min(best, time.thread_time() - start)
        return best
    finally:
        if was_enabled:
            gc.enable()


_ADVERSARIAL = ["\n", "\n\n\n", " ", "\t \n ", "   \n", ".", "!", "x", "a ", "dr ", "Dr. a\n", "hope this ", "Hope it helps. ",
                "regards\n", ".regards", "Take care. ", "take care,\n", "good luck and ", "thanks", "Thank you.\n",
                "let me know ", "Let me know. ", "wishing you ", "consult a doc online --> u. ", "online->", ">", "-",
                "hi, ", "hi dr doctor ", " dr", "welcome ", "thanks for ", "q. "]


@given(st.lists(st.sampled_from(_ADVERSARIAL), min_size=1, max_size=4), st.sampled_from(["", "Rest.", "hi", "x. "]),
       st.sampled_from(["", "x", "Take care.", " 1"]))
@settings(max_examples=12, deadline=None)
def test_property_time_is_linear_on_adversarial_texts(unit_parts, head, tail):
    """Newline runs, whitespace runs and repeated sign-off fragments: 4x the length costs about
    4x the time (the plain regexes took ~18 s on one answer with 16k newlines, x4 per doubling)."""
    unit = "".join(unit_parts)
    for rule in RULES:
        t16k = _cpu_seconds(rule, head + unit * (16_000 // len(unit)) + tail)
        t64k = _cpu_seconds(rule, head + unit * (64_000 // len(unit)) + tail)
        assert t64k < 0.5, (rule, unit, t64k)
        assert t64k <= 8 * t16k + 0.05, (rule, unit, t16k, t64k)  # linear: ~4x; quadratic: 16x


@pytest.mark.parametrize("rule, text", [
    ("answer_signoff", "Rest." + "\n" * 16_000 + "x"),
    ("answer_signoff", "x. " + "Take care. " * 6_000),
    ("answer_signoff", "x." + "\nDr. a" * 12_000),
    ("question_greeting", "hi" + " dr doctor" * 6_000 + " 1"),  # exponential for the plain regex
    ("answer_greeting", "hi" + " " * 60_000 + "x"),
])
def test_adversarial_answer_is_cleaned_quickly(rule, text):
    assert _cpu_seconds(rule, text) < 0.5
