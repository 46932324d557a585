"""Cleaning rules (medqa_core.cleaning): one test per rule, on the rule alone and through the
loader, where the per-rule counts land in the load stats."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medqa_core.cleaning import RULES, clean_row
from medqa_core.datasets import load_examples
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
