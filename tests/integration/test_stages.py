"""stages.py: each cache entry's shape (Artifact), its key, and when it is built. The heavy parts
(model loading, generation, scoring) are replaced by recording fakes: what is tested is the
orchestration, i.e. what is built when, what the key depends on, and what comes back."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from medqa_core import metrics, stages
from medqa_core.cache import Cache, content_key
from medqa_core.errors import ConfigError
from medqa_core.model import bases, generation, prompts
from medqa_core.profile import load_profile
from medqa_core.specs import GenerationConfig

PROFILE = load_profile("tiny")
SPEC = PROFILE.models["llama"]
BASE = stages.Artifact("base", "b" * 64, "base-dir", {}, False)
TUNED = stages.Artifact("adapter", "a" * 64, "adapter-dir", {}, False)


@pytest.fixture
def fake_generation(monkeypatch):
    """Loaders that return placeholders and a generator that answers 'A: <question>'; records
    every batch of questions it is asked."""
    asked: list[list[str]] = []

    class Model:
        dtype = None

    def generate(model, tok, questions, gen, device, settings, progress_stage=""):
        asked.append(list(questions))
        settings["max_new_tokens"] = gen.max_new_tokens
        return [f"A: {q}" for q in questions]

    monkeypatch.setattr(bases, "load_tokenizer", lambda *a, **k: object())
    monkeypatch.setattr(bases, "load_base", lambda *a, **k: Model())
    monkeypatch.setattr(generation, "generate_answers", generate)
    monkeypatch.setattr(generation, "generation_prompt_ids", lambda tok, q: [len(q)])
    monkeypatch.setattr(prompts, "build_prompt", lambda tok, q: f"Q: {q}")
    import peft

    monkeypatch.setattr(peft.PeftModel, "from_pretrained", staticmethod(lambda model, path: model))
    return asked


def test_answers_generate_each_distinct_question_once_and_keep_question_order(tmp_path, fake_generation):
    cache = Cache(tmp_path)
    questions = ["b?", "a?", "b?", "", "", "a?"]
    art = stages.answers(cache, SPEC, BASE, None, questions, GenerationConfig(), "cpu")
    assert fake_generation == [["b?", "a?", ""]]
    assert art.value == [f"A: {q}" for q in questions]
    assert art.stage == "answers" and art.built and Path(art.source).is_dir()
    assert art.key == content_key(stages.answers_payload(BASE.key, None, ["b?", "a?", ""], GenerationConfig(),
                                                                "cpu", spec=SPEC))
    again = stages.answers(cache, SPEC, BASE, None, questions, GenerationConfig(), "cpu")
    assert fake_generation == [["b?", "a?", ""]], "a warm entry generates nothing"
    assert (again.built, again.key, again.value) == (False, art.key, art.value)


def test_answers_key_names_model_questions_generation_and_quantization(tmp_path, fake_generation):
    cache = Cache(tmp_path)
    qs = ["a?", "b?"]
    keys = {
        "base": stages.answers(cache, SPEC, BASE, None, qs, GenerationConfig(), "cpu").key,
        "tuned": stages.answers(cache, SPEC, BASE, TUNED, qs, GenerationConfig(), "cpu").key,
        "questions": stages.answers(cache, SPEC, BASE, None, ["a?", "c?"], GenerationConfig(), "cpu").key,
        "generation": stages.answers(cache, SPEC, BASE, None, qs, GenerationConfig(max_new_tokens=7), "cpu").key,
        "nf4": stages.answers(cache, SPEC, BASE, None, qs, GenerationConfig(), "cpu", "nf4").key,
    }
    assert len(set(keys.values())) == len(keys), keys
    assert len(fake_generation) == len(keys)
    # the same questions in another order or with repeats are the same entry
    stages.answers(cache, SPEC, BASE, None, ["b?", "a?", "a?"], GenerationConfig(), "cpu")
    assert len(fake_generation) == len(keys) + 1  # another first-seen order: another entry
    assert stages.answers(cache, SPEC, BASE, None, ["a?", "b?", "b?"], GenerationConfig(), "cpu").built is False


def test_scores_stage_returns_one_array_per_metric_and_is_warm_after(tmp_path, monkeypatch):
    calls = []

    def score_all(answers, refs, scorer):
        calls.append((list(answers), list(refs)))
        return {m: np.arange(len(answers), dtype=float) / 10 for m in metrics.METRICS}

    monkeypatch.setattr(metrics, "score_all", score_all)
    cache, scorer = Cache(tmp_path), metrics.ScorerConfig()
    art = stages.scores(cache, ["x", "y", "z"], ["r1", "r2", "r3"], scorer, "cpu")
    assert art.built and set(art.value) == set(metrics.METRICS)
    assert all(np.array_equal(v, [0.0, 0.1, 0.2]) for v in art.value.values())
    again = stages.scores(cache, ["x", "y", "z"], ["r1", "r2", "r3"], scorer, "cpu")
    assert not again.built and len(calls) == 1 and again.key == art.key
    assert stages.scores(cache, ["x", "y", "z"], ["r1", "r2", "r4"], scorer, "cpu").key != art.key
    assert len(calls) == 2


def test_checkpoint_base_is_keyed_by_its_files_and_never_cached(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"w1")
    spec = dataclasses.replace(SPEC, checkpoint=str(ckpt))
    cache = Cache(tmp_path / "cache")
    first = stages.base(PROFILE, spec, cache)
    assert (first.source, first.built, first.value) == (str(ckpt), False, None)
    assert not any((tmp_path / "cache").glob("base/*")), "a checkpoint is read in place, not copied"
    (ckpt / "model.safetensors").write_bytes(b"w2")
    assert stages.base(PROFILE, spec, cache).key != first.key


def test_missing_checkpoint_is_one_line_naming_the_profile(tmp_path):
    spec = dataclasses.replace(SPEC, checkpoint=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError) as info:
        stages.base(PROFILE, spec, Cache(tmp_path / "cache"))
    msg = str(info.value)
    assert "nowhere" in msg and str(PROFILE.path) in msg and "make_tiny_bases.py" in msg and "\n" not in msg


def test_adapter_entry_with_an_empty_meta_is_rebuilt_not_a_key_error(tmp_path, monkeypatch, caplog):
    """A cached adapter whose meta.json is ``{}`` used to be served and die with KeyError 'stats';
    it is a damaged entry: rebuilt, with one warning."""
    from medqa_core.train import finetune
    from medqa_core.train.finetune import TrainStats

    trained = []

    def fake_fine_tune(model, tok, spec, train, cfg, out_dir, device):
        trained.append(out_dir)
        out_dir.mkdir()
        (out_dir / "adapter_model.safetensors").write_bytes(b"lora")
        return TrainStats(1.0, 10.0, 10, 5, 50, 1.0, 2.0, 3.0, 2.0, "cpu", steps_run=2, rows=1)

    monkeypatch.setattr(finetune, "fine_tune", fake_fine_tune)
    monkeypatch.setattr(bases, "free_memory", lambda: None)
    monkeypatch.setattr(bases, "load_base", lambda *a, **k: object())  # the trainer is faked: no model needed
    monkeypatch.setattr(bases, "load_tokenizer", lambda *a, **k: object())
    cache = Cache(tmp_path)
    rows = [stages.QAExample("i", "q?", "a.")]
    run = lambda: stages.adapter(cache, BASE, SPEC, rows, PROFILE.train, "cpu")  # noqa: E731
    first = run()
    assert first.built and first.value.steps_run == 2 and len(trained) == 1
    (Path(first.source).parent / "meta.json").write_text("{}")
    with caplog.at_level("WARNING", logger="medqa_core.cache"):
        again = run()
    assert again.built and again.key == first.key and again.value == first.value and len(trained) == 2
    assert [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()] != []
    assert run().built is False and len(trained) == 2
