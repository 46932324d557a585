"""One normalisation for dedup and the leak check (cleaning.normalise_question), and the
near-duplicate rule that keeps template siblings apart (leakage.same_content).

- punctuation, spacing, case and Unicode-width variants of a question are deduplicated once,
  so none of them can come back as an "exact" train/test leak;
- template siblings that differ in a content word ("... Dry eyes ?" / "... Dry skin ?") are not
  near duplicates, while rewordings, ages/durations, plurals and typos still are;
- the fixture datasets of the tiny and small profiles load, clean and split exactly as before:
  their data fingerprints and test ids equal the recorded baselines' (tiny and small).
"""
from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medqa_core.data import datasets
from medqa_core.data import split as split_mod
from medqa_core.data.cleaning import normalise_question
from medqa_core.data.datasets import load_examples
from medqa_core.data.leakage import content_words, jaccard, leakage, near_duplicate, same_content, same_word, shingles
from medqa_core.data.split import load_split, split
from medqa_core.profile import load_profile
from medqa_core.specs import DatasetSpec, SplitConfig

METHODS = ["pairwise", "minhash-lsh"]


def spec(file: str = "q.json") -> DatasetSpec:
    return DatasetSpec(name="q", file=file, question=("q",), answer="a")


# ---------------------------------------------------------------- the normal form


def test_normal_form_by_hand():
    assert normalise_question("  What is  FLU ?! ") == "what is flu"
    assert normalise_question("what_is\tflu") == "what is flu"
    assert normalise_question("Ｗｈａｔ ｉｓ ｆｌｕ？") == "what is flu"  # full-width (NFKC)
    assert normalise_question("Straße") == normalise_question("STRASSE")  # case folding
    assert normalise_question("dry-eye's cause") == "dry eye s cause"
    # nothing but symbols: kept (case-folded, spaces collapsed), so different ones stay different
    assert normalise_question(" ??  ") == "??" and normalise_question("!!") != normalise_question("??")


WORDS = st.sampled_from(["what", "is", "Flu", "fever", "cough", "IS", "a", "child", "3", "weeks"])
SEP = st.text(alphabet=" \t\n.,;:!?-_()'\"", min_size=1, max_size=3)


@st.composite
def variants(draw):
    """A question and a variant of it that differs only in case, spacing and punctuation."""
    words = draw(st.lists(WORDS, min_size=1, max_size=8))
    cased = [w.upper() if draw(st.booleans()) else w for w in words]
    seps = [draw(SEP) for _ in words[1:]]
    lead, trail = draw(SEP | st.just("")), draw(SEP | st.just(""))
    return " ".join(words), lead + cased[0] + "".join(s + w for s, w in zip(seps, cased[1:])) + trail


@given(variants())
@settings(max_examples=200, deadline=None)
def test_property_variants_share_the_normal_form(pair):
    plain, varied = pair
    assert normalise_question(varied) == normalise_question(plain) == plain.lower()


@given(st.text(max_size=40))
@settings(max_examples=300, deadline=None)
def test_property_normal_form_is_idempotent_and_trimmed(text):
    n = normalise_question(text)
    assert normalise_question(n) == n
    assert n == n.strip() and "  " not in n


# ---------------------------------------------------------------- dedup = leak check's form


def test_variants_are_deduplicated_once(tmp_path):
    rows = [{"q": "What is flu?", "a": "first"}, {"q": "what is flu", "a": "2"}, {"q": "What  is FLU ?!", "a": "3"},
            {"q": "What is flu, really?", "a": "other question"}]
    (tmp_path / "q.json").write_text(json.dumps(rows))
    examples, stats = load_examples(spec(), tmp_path)
    assert (stats.dropped_duplicate, stats.kept) == (2, 2)
    assert [e.answer for e in examples] == ["first", "other question"]  # the first row of each question stays
    # the surviving row's id is the one it always had (the split is keyed on it)
    assert examples[0].id == hashlib.sha256(b"what is flu?").hexdigest()[:16]


@given(st.lists(st.text(alphabet=string.ascii_letters[:6] + " ?!.,", min_size=1, max_size=12), min_size=3, max_size=30),
       st.integers(1, 2))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
def test_property_no_exact_leak_survives_dedup(tmp_path_factory, questions, test_size):
    d = tmp_path_factory.mktemp("rows")
    (d / "q.json").write_text(json.dumps([{"q": q, "a": "x"} for q in questions]))
    try:
        examples, _ = load_examples(spec(), d)
    except datasets.DatasetError:  # every row empty after stripping
        return
    if len(examples) <= test_size:
        return
    s = split(examples, SplitConfig(test_size=test_size))
    assert leakage([e.question for e in s.train], [e.question for e in s.test]).exact == 0
    assert len({normalise_question(e.question) for e in examples}) == len(examples)


def test_a_punctuation_variant_is_no_exact_leak(tmp_path):
    """Before the shared form, "Is it flu?" and "is it flu ." both survived dedup (different
    lower-case text) and the leak check then called one an exact leak of the other."""
    rows = [{"q": f"question number {i} about a different topic entirely", "a": "x"} for i in range(30)]
    rows += [{"q": "Is it flu?", "a": "a"}, {"q": "is it flu .", "a": "b"}]
    (tmp_path / "q.json").write_text(json.dumps(rows))
    s = load_split(spec(), tmp_path, SplitConfig(test_size=10))
    assert s.stats.dropped_duplicate == 1 and s.stats.kept == 31
    assert s.stats.leak["exact"] == 0


# ---------------------------------------------------------------- near duplicates


SIBLINGS = [
    ("What are the signs and symptoms of Dry eyes ?", "What are the signs and symptoms of Dry skin ?"),
    ("For a while now I have felt anxious. My mind races as soon as I get into bed. Where do I even start?",
     "For a while now I have felt sad. My mind races as soon as I get into bed. Where do I even start?"),
    ("What are the risk factors for GERD?", "What are the risk factors for gout?"),
    ("I have pain in my hip when I walk upstairs, what should I do?",
     "I have pain in my lip when I walk upstairs, what should I do?"),  # one edit, but a short word
]

NEAR = [
    ("What are the symptoms of Dry eyes ?", "what are the symptoms of dry eye"),  # plural, punctuation
    ("I am 34 and have had a dry cough and a mild fever for two weeks. What should I do about it?",
     "I am 45 and have had a dry cough and a mild fever for 3 months. What should I do about it?"),  # age, duration
    ("Hi doctor, I have been experiencing bloating, heartburn and nausea. Please help, what should I do?",
     "I have been experiencing heartburn, bloating and nausea. What should I do, doctor?"),  # reordered, fillers
    ("What is the first-line treatment for type diabetes in pregnancy?",
     "What is the first-line treatment for type diabetis in pregnancy?"),  # a typo in a long word
]


@pytest.mark.parametrize("a, b", SIBLINGS)
def test_template_siblings_are_not_near_duplicates(a, b):
    assert jaccard(shingles(a), shingles(b)) >= 0.8  # the 5-gram test alone would flag them
    assert not near_duplicate(a, b)
    for method in METHODS:
        r = leakage([a], [b], 0.8, method=method)
        assert (r.exact, r.near, r.siblings) == (0, 0, 1)


@pytest.mark.parametrize("a, b", NEAR)
def test_true_near_duplicates_are_still_found(a, b):
    j = jaccard(shingles(a), shingles(b))
    assert j >= 0.5 and same_content(content_words(a), content_words(b)) and near_duplicate(a, b, threshold=j)
    for method in METHODS:
        r = leakage([a, "an unrelated question about something else entirely"], [b], j - 1e-9, method=method)
        assert (r.exact, r.near, r.siblings) == (0, 1, 0)


def test_siblings_differ_in_exactly_their_content_words():
    a, b = SIBLINGS[0]
    assert content_words(a) ^ content_words(b) == {"eyes", "skin"}
    assert content_words(a) == {"signs", "symptoms", "dry", "eyes"}


def test_same_word_rules():
    assert same_word("eye", "eyes") and same_word("rash", "rashes")
    assert same_word("diabetes", "diabetis") and same_word("asthma", "asthmas")
    assert not same_word("hip", "lip") and not same_word("skin", "shin") and not same_word("eyes", "skin")
    assert same_content(frozenset({"eyes", "dry"}), frozenset({"eye", "dry"}))
    assert not same_content(frozenset({"dry", "eyes"}), frozenset({"dry"}))  # an extra content word


@given(st.lists(st.sampled_from(["dry", "eyes", "skin", "gout", "acute", "pain", "the", "of", "2", "weeks"]),
                min_size=1, max_size=8), st.data())
@settings(max_examples=150, deadline=None)
def test_property_same_content_is_symmetric_and_reflexive(words, data):
    other = data.draw(st.lists(st.sampled_from(words + ["rash"]), min_size=1, max_size=8))
    a, b = frozenset(words), frozenset(other)
    assert same_content(a, a)
    assert same_content(a, b) == same_content(b, a)


# ---------------------------------------------------------------- the fixtures stay byte-identical


def _legacy_dedup(monkeypatch):
    """The loader as it was: duplicates (and the split's leak guard) by lower-case,
    whitespace-collapsed text."""
    monkeypatch.setattr(datasets, "normalise_question", datasets.normalize)
    monkeypatch.setattr(split_mod, "normalise_question", datasets.normalize)


def _baseline(profile) -> dict:
    return json.loads(Path(profile.resolve(str(profile.baseline))).read_text())


@pytest.mark.parametrize("dataset", ["wikidoc", "mental_health", "medical_dataset", "ai_medical_chatbot", "healthcaremagic"])
def test_tiny_fixture_data_fingerprints_match_the_baseline(dataset, monkeypatch):
    profile = load_profile("tiny")
    dspec = profile.datasets[dataset]
    s = load_split(dspec, profile.data_dir, profile.split)
    recorded = {c["identity"]["data"] for cid, c in _baseline(profile)["cases"].items()
                if cid.endswith("-" + dataset) and "identity" in c}
    assert recorded == {s.fingerprint()}, f"{dataset}: rows or split changed; baselines/tiny.json would be incomparable"
    _legacy_dedup(monkeypatch)
    assert load_split(dspec, profile.data_dir, profile.split).fingerprint() == s.fingerprint()


@pytest.mark.parametrize("dataset", ["wikidoc", "mental_health", "medical_dataset", "ai_medical_chatbot", "healthcaremagic"])
def test_small_fixture_split_matches_the_baseline(dataset, monkeypatch):
    """baselines/small.json (schema 2, K runs): its data fingerprint and every run's test ids
    must be the split's, and the rows must be what the old dedup gave (same fingerprint)."""
    profile = load_profile("small")
    dspec = profile.datasets[dataset]
    s = load_split(dspec, profile.data_dir, profile.split)
    cases = {cid: c for cid, c in _baseline(profile)["cases"].items() if cid.endswith("-" + dataset)}
    assert cases, f"baselines/small.json has no case for {dataset}"
    for cid, c in cases.items():
        assert c["identity"]["data"] == s.fingerprint(), f"{cid}: rows or split changed"
        assert c["runs"], f"{cid}: no runs recorded"
        for run in c["runs"]:
            assert run["per_example"]["ids"] == [e.id for e in s.test], f"{cid} seed {run['seed']}: test set changed"
    _legacy_dedup(monkeypatch)
    assert load_split(dspec, profile.data_dir, profile.split).fingerprint() == s.fingerprint()
