"""The scorers embed a case's references once per process (issue 27, cheaper scoring): the
reference set is the same for every seed of a case and for its base answers. A hit must give
the same bits a miss gives, a changed set must miss, and the kept sets are bounded."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

from medqa_core.metrics import bertscore, use
from medqa_core.model.bases import free_memory

from test_metrics import FakeEncoder, expected_use

REFS = ["Rest and drink fluids. See a doctor if the fever lasts.", "Ibuprofen eases the pain.",
        "Insulin lowers blood sugar; check it before meals.", "A stroke needs emergency care at once."]
CANDS_A = ["Rest at home. Drink water.", "Take ibuprofen.", "Check your sugar.", "Call an ambulance."]
CANDS_B = ["Sleep.", "Paracetamol or ibuprofen helps with pain. Ask a pharmacist.", "Eat less sugar.", ""]


@pytest.fixture(autouse=True)
def _empty_caches():
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
            assert (second["use_p"][i], second["use_r"][i], second["use_f1"][i], second["cosine"][i]) == \
                pytest.approx(want, abs=1e-12)
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


def test_free_memory_freezes_survivors_and_still_collects_new_cycles():
    free_memory()
    assert gc.get_freeze_count() > 0

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # a reference cycle made after the freeze
    gone = weakref.ref(a)
    del a, b
    free_memory()
    assert gone() is None, "a cycle made after the last freeze was not collected"
    model = torch.nn.Linear(4, 4)
    model.me = [model]  # a module in a cycle, dropped before free_memory as the stages do
    gone = weakref.ref(model)
    del model
    free_memory()
    assert gone() is None
