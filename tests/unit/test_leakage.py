"""Train/test leakage (medqa_core.data.leakage, data.split.check_leakage): planted exact and near
duplicates are found by both methods, disjoint sets report 0, and a split that leaks beyond
[split] max_leak_fraction fails with one line naming the dataset and the count."""
from __future__ import annotations

import json
import random
import string
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medqa_core.data import leakage as leakage_mod
from medqa_core.data.datasets import QAExample
from medqa_core.data.leakage import jaccard, leakage, minhash_signature, near_duplicate, normalize_for_leak, shingles
from medqa_core.data.split import Split, check_leakage, load_split
from medqa_core.errors import DatasetError, LeakageError
from medqa_core.specs import DatasetSpec, SplitConfig

METHODS = ["pairwise", "minhash-lsh"]


def random_sentence(rng: random.Random, words: int = 12) -> str:
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(words)) + "?"


def test_shingles_and_jaccard_by_hand():
    assert shingles("Abcdef") == frozenset({"abcde", "bcdef"})
    assert shingles("a.b") == frozenset({"a b"})
    assert shingles("") == frozenset()
    assert jaccard(frozenset("ab"), frozenset("bc")) == pytest.approx(1 / 3)
    assert normalize_for_leak("  Hi,   DOCTOR!! ") == "hi doctor"


def test_minhash_estimates_jaccard():
    rng = random.Random(1)
    a = random_sentence(rng, 30)
    b = a[: len(a) // 2] + random_sentence(rng, 15)
    sa, sb = shingles(a), shingles(b)
    est = float((minhash_signature(sa) == minhash_signature(sb)).mean())
    assert abs(est - jaccard(sa, sb)) < 0.2
    assert (minhash_signature(sa) == minhash_signature(shingles(a.upper()))).all()


@pytest.mark.parametrize("method", METHODS)
def test_disjoint_sets_report_zero(method):
    rng = random.Random(0)
    train = [random_sentence(rng) for _ in range(200)]
    test = [random_sentence(rng) for _ in range(30)]
    r = leakage(train, test, 0.8, method=method)
    assert (r.exact, r.near, r.leaked, r.fraction, r.test) == (0, 0, 0, 0.0, 30)


@pytest.mark.parametrize("method", METHODS)
def test_planted_exact_and_near_duplicates_are_found(method):
    rng = random.Random(7)
    train = [random_sentence(rng, 20) for _ in range(300)]
    test = [random_sentence(rng, 20) for _ in range(40)]
    test[3] = train[10].upper().replace(" ", "  ")  # exact after normalization
    test[5] = train[20] + "!"  # punctuation only: exact
    test[8] = train[30][:-1] + " please"  # near: one word added
    test[9] = "x" + train[40]  # near: one character added
    r = leakage(train, test, 0.8, method=method)
    assert r.exact == 2
    assert r.near == 2
    assert r.leaked == 4 and r.fraction == pytest.approx(4 / 40)


@given(st.lists(st.text(alphabet=string.ascii_lowercase + " ", min_size=25, max_size=60), min_size=2, max_size=25, unique=True),
       st.data())
@settings(max_examples=40, deadline=None)
def test_property_planted_copies_always_found(pool, data):
    k = data.draw(st.integers(1, len(pool) - 1))
    train, test_fresh = pool[:k], []
    planted = data.draw(st.lists(st.sampled_from(train), min_size=1, max_size=5))
    test = test_fresh + [p.upper() + " " for p in planted]  # differs only by case and whitespace
    for method in METHODS:
        r = leakage(train, test, 0.8, method=method)
        assert r.exact == len(planted) and r.near == 0


@given(st.integers(0, 10_000), st.integers(1, 30), st.integers(1, 10))
@settings(max_examples=25, deadline=None)
def test_property_pairwise_and_lsh_agree_on_planted_sets(seed, n_train, n_test):
    rng = random.Random(seed)
    train = [random_sentence(rng, 15) for _ in range(n_train)]
    test = [random_sentence(rng, 15) for _ in range(n_test)]
    for i in range(0, n_test, 2):  # every other test row is a copy with one extra word
        test[i] = train[rng.randrange(n_train)][:-1] + " ok"
    a = leakage(train, test, 0.8, method="pairwise")
    b = leakage(train, test, 0.8, method="minhash-lsh")
    assert a.exact == b.exact == 0
    assert a.near == (n_test + 1) // 2
    assert b.near <= a.near  # LSH verifies candidates exactly: never more than the truth
    assert b.near >= a.near - 1  # ... and misses almost nothing at this similarity


def test_threshold_is_respected():
    train = ["what are the symptoms of influenza in children"]
    test = ["symptoms of influenza in children: what are they?"]  # same content words, reworded
    j = jaccard(shingles(train[0]), shingles(test[0]))
    assert 0.5 < j < 0.9
    assert leakage(train, test, threshold=j - 0.01).near == 1
    assert leakage(train, test, threshold=j + 0.01).near == 0
    sibling = ["what are the symptoms of influenza in adults"]  # another content word: never near
    js = jaccard(shingles(train[0]), shingles(sibling[0]))
    assert (leakage(train, sibling, threshold=js - 0.01).near, leakage(train, sibling, threshold=js - 0.01).siblings) == (0, 1)


def test_unknown_method():
    with pytest.raises(ValueError, match="method"):
        leakage(["a"], ["b"], method="bloom")


# ---------------------------------------------------------------- the gate on a split

def qa(q: str) -> QAExample:
    return QAExample(q[:16], q, "answer")


def test_check_leakage_over_limit_is_one_line_error_naming_dataset_and_count():
    train = [qa("how long does a common cold last in adults"), qa("what causes migraine headaches in teenagers")]
    test = [qa("how long does a common cold last in adults?"), qa("is a rash after penicillin an allergy")]
    s = Split(train, test)
    report = check_leakage(s, SplitConfig(test_size=2, max_leak_fraction=None), "wikidoc")
    assert (report.exact, report.near) == (1, 0)
    check_leakage(s, SplitConfig(test_size=2, max_leak_fraction=0.5), "wikidoc")  # 50% is not beyond 0.5
    with pytest.raises(LeakageError) as info:
        check_leakage(s, SplitConfig(test_size=2, max_leak_fraction=0.4), "wikidoc")
    msg = str(info.value)
    assert isinstance(info.value, DatasetError) and "\n" not in msg
    assert "'wikidoc'" in msg and "1 of 2 test questions" in msg and "max_leak_fraction = 0.4" in msg


def test_load_split_records_leak_counts(tmp_path):
    rows = [{"q": f"question about topic number {i} and its usual treatment", "a": f"answer {i}"} for i in range(60)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    spec = DatasetSpec(name="d", file="d.json", question=("q",), answer="a")
    s = load_split(spec, tmp_path, SplitConfig(test_size=10))
    leak = s.stats.leak
    assert leak["test"] == 10 and leak["exact"] == 0
    # questions differ by one number: every test row has a near duplicate in train
    assert leak["near"] == 10 and leak["fraction"] == 1.0
    with pytest.raises(LeakageError, match="'d': 10 of 10"):
        load_split(spec, tmp_path, SplitConfig(test_size=10, max_leak_fraction=0.2))
    far = [{"q": random_sentence(random.Random(i), 10), "a": "x"} for i in range(60)]
    (tmp_path / "d.json").write_text(json.dumps(far))
    assert load_split(spec, tmp_path, SplitConfig(test_size=10, max_leak_fraction=0.0)).stats.leak["leaked"] == 0


# ---------------------------------------------------------------- template families (the index path)

def reference_leakage(train: list[str], test: list[str], threshold: float) -> tuple[int, int, int]:
    """(exact, near, siblings) pair by pair with the one-pair rules, nothing shared with leakage()'s
    sparse overlaps or its content-word index."""
    train_norm = {normalize_for_leak(q) for q in train}
    exact = near = siblings = 0
    for q in test:
        if normalize_for_leak(q) in train_norm:
            exact += 1
            continue
        close = [t for t in train if jaccard(shingles(q), shingles(t)) >= threshold]
        if any(near_duplicate(q, t, threshold) for t in close):
            near += 1
        elif close:
            siblings += 1
    return exact, near, siblings


SLOT_WORDS = ["eyes", "eye", "skin", "shin", "hip", "lip", "diabetes", "diabetis", "asthma", "asthmas", "fever",
              "fevers", "migraine", "migrane", "rash", "rashes", "anxiety", "anxeity", "", "two weeks", "34"]


@given(st.lists(st.tuples(st.sampled_from(SLOT_WORDS), st.sampled_from(SLOT_WORDS)), min_size=80, max_size=160),
       st.integers(5, 30), st.sampled_from(METHODS), st.sampled_from([0, leakage_mod.INDEX_FROM]))
@settings(max_examples=40, deadline=None)
def test_property_template_families_match_the_pair_by_pair_reference(slots, n_test, method, index_from):
    """Questions from one template get the same exact / near / sibling counts as the one-pair
    rules applied to every pair, whether the content-word index decides (``INDEX_FROM = 0``:
    always) or the pairs are checked one by one."""
    qs = [f"What are the symptoms and usual treatment of {a} and {b} in adults ?" for a, b in slots]
    test, train = qs[:n_test], qs[n_test:]
    with mock.patch.object(leakage_mod, "INDEX_FROM", index_from):
        r = leakage(train, test, 0.8, method=method)
    got = (r.exact, r.near, r.siblings)
    want = reference_leakage(train, test, 0.8)
    if method == "pairwise":
        assert got == want
    else:  # LSH may miss a candidate pair (never adds one): near and siblings can only shrink
        assert r.exact == want[0] and r.near <= want[1] and r.near + r.siblings <= want[1] + want[2]


def test_a_large_template_split_is_checked_in_near_linear_time():
    """8000 questions of one template (LSH finds every pair a candidate) used to take ~25 s in
    Python; the sparse overlaps and the content-word index keep it to seconds."""
    import time

    rng = random.Random(0)
    names = ["".join(rng.choice("bcdfghjklmnpqrstvwxz") + rng.choice("aeiou") for _ in range(3)) for _ in range(8000)]
    qs = [f"What are the usual symptoms and treatment options of {w} disease in adults ?" for w in names]
    t0 = time.process_time()
    r = leakage(qs[800:], qs[:800], 0.8)
    assert r.method == "minhash-lsh" and r.near + r.siblings > 700  # the template family is found
    assert time.process_time() - t0 < 15.0
