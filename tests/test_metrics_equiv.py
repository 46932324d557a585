"""``score_all`` (deduplicated, length-sorted batches) gives the same scores as scoring one
pair at a time, to 1e-6, on answers of many lengths with repeats, an empty answer and a
whitespace-only one."""
from __future__ import annotations

import numpy as np

from benchmarks.plain import score_pair_by_pair
from medqa_core.datasets import load_split
from medqa_core.metrics import METRICS, score_all
from medqa_core.specs import load_profile


def test_batched_scores_equal_pair_by_pair():
    prof = load_profile("tiny")
    answers = []
    for dspec in prof.datasets.values():
        answers += [e.answer for e in load_split(dspec, prof.data_dir, prof.split).test[:8]]
    refs = answers[::-1]
    cands = answers[:30] + answers[:6] + ["", "   "] + [answers[3].split(".")[0]]
    refs = refs[: len(cands)]
    ours = score_all(cands, refs)
    plain = score_pair_by_pair(cands, refs)
    for m in METRICS:
        np.testing.assert_allclose(ours[m], plain[m], atol=1e-6, rtol=0, err_msg=m)
    assert ours["bert_f1"][36] == 0.0 and ours["use_f1"][37] == 0.0
    assert np.all(ours["bert_f1"][:30] > 0.1)
    assert len(set(np.round(ours["bert_f1"][:30], 6))) >= 15, "scores differ pair to pair"
