"""The recipe as applied (train/applied.py), read back from the objects that trained, equals what
the profile asks (computed independently), for both trainers; and each kind of drift is seen."""
from __future__ import annotations

import dataclasses

import pytest
from helpers import REPO_ROOT

from medqa_core.data.split import load_split
from medqa_core.model.bases import load_tokenizer
from medqa_core.model.pretrain import build_tiny
from medqa_core.profile import load_profile
from medqa_core.train import applied
from medqa_core.train.finetune import fine_tune


@pytest.fixture(scope="module")
def setup():
    pytest.importorskip("torch")
    prof = load_profile("tiny")
    tok = load_tokenizer(REPO_ROOT / "fixtures" / "tokenizer")
    data = load_split(prof.datasets["wikidoc"], prof.data_dir, prof.split)
    return prof, tok, data.train[:40]


def _train(setup, tmp_path, **changes):
    prof, tok, train = setup
    spec = prof.models["llama"]
    cfg = dataclasses.replace(prof.train, steps=6, batch_size=4, **changes)
    stats = fine_tune(build_tiny(spec, tok, 0), tok, spec, train, cfg, tmp_path, "cpu")
    return spec, cfg, stats


@pytest.mark.parametrize("trainer", ["lean", "sft"])
def test_applied_recipe_equals_the_asked_one(setup, tmp_path, trainer):
    spec, cfg, stats = _train(setup, tmp_path, trainer=trainer, warmup_ratio=0.34, lora_dropout=0.1)
    got = stats.recipe["applied"]
    want = applied.asked(spec, cfg, stats.trainable_params, applied.logged_steps(cfg.steps))
    assert want == stats.recipe["asked"]
    problems = applied.compare(got, want)
    assert problems == [], problems
    assert got["lora_scaling"] == cfg.lora_alpha / cfg.lora_r and got["lora_dropout"] == 0.1
    assert len(got["lr_at_log"]) == len(applied.logged_steps(cfg.steps)) == 6
    # the loss is on the completion only, every untruncated row ends in EOS
    assert got["supervised_tokens"] > 0 and got["prompt_tokens"] > 0 and got["eos_rows"] > 0


def test_each_kind_of_drift_is_named(setup, tmp_path):
    spec, cfg, stats = _train(setup, tmp_path, trainer="lean")
    want = stats.recipe["asked"]
    base = dict(stats.recipe["applied"])
    cases = {
        "lora_scaling": {**base, "lora_scaling": base["lora_scaling"] * 2},
        "optimizer": {**base, "optimizer": [{**base["optimizer"][0], "weight_decay": 0.01}]},
        "lr_at_log": {**base, "lr_at_log": [x * 0.999 for x in base["lr_at_log"]]},
        "untruncated_rows_without_eos": {**base, "untruncated_rows_without_eos": 3},
        "rows_without_prompt": {**base, "rows_without_prompt": 40},
        "lora_targets": {**base, "lora_targets": ["q_proj"]},
    }
    for key, got in cases.items():
        problems = applied.compare(got, want)
        assert [p[0] for p in problems] == [key], (key, problems)


def test_the_gate_names_each_setting_that_moved():
    from medqa_core.gate import judge_recipe

    applied_ = {"lora_scaling": 2.0, "optimizer": [{"lr": 0.002, "weight_decay": 0.0}], "lr_at_log": [0.0, 0.001],
                "train_prompt_ids": "abc", "supervised_tokens": 900}
    asked_ = {"lora_scaling": 2.0, "optimizer": [{"lr": 0.002, "weight_decay": 0.0}], "lr_at_log": [0.0, 0.001]}
    inv = {"recipe": applied_, "recipe_asked": asked_, "generation_prompt_ids": "abc"}
    [ok] = judge_recipe(inv, {"recipe": dict(applied_)})
    assert ok.passed and ok.name == "recipe"
    moved = judge_recipe({**inv, "recipe": {**applied_, "lora_scaling": 4.0}}, {})
    assert [(c.name, c.passed) for c in moved] == [("recipe:lora_scaling", False)]
    layout = judge_recipe({**inv, "generation_prompt_ids": "abd"}, {})
    assert [c.name for c in layout] == ["recipe:prompt_layout"]
    changed = judge_recipe(inv, {"recipe": {**applied_, "supervised_tokens": 800}})
    assert [c.name for c in changed] == ["recipe:supervised_tokens"] and "baseline" in changed[0].detail
    assert judge_recipe({"train_steps": 3}, {}) == []  # an adapter built before recipes were recorded


def test_cpu_bf16_trains_under_bf16_autocast_or_is_refused(setup, tmp_path, monkeypatch):
    """``[train] cpu_bf16``: bf16 autocast where the CPU has it natively (the recipe says so),
    one line refusing it where it has not (never emulated)."""
    from medqa_core import resources
    from medqa_core.errors import TrainingError

    monkeypatch.setattr(resources, "native_cpu_bf16", lambda: False)
    with pytest.raises(TrainingError, match="no native bf16"):
        _train(setup, tmp_path / "a", trainer="lean", cpu_bf16=True)
    monkeypatch.setattr(resources, "native_cpu_bf16", lambda: True)  # autocast runs anywhere; speed needs native
    spec, cfg, stats = _train(setup, tmp_path / "b", trainer="lean", cpu_bf16=True)
    assert stats.recipe["applied"]["autocast"] == "bfloat16" == stats.recipe["asked"]["autocast"]
    _, _, plain = _train(setup, tmp_path / "c", trainer="lean")
    assert plain.recipe["applied"]["autocast"] == "none"
    assert stats.loss_last != plain.loss_last  # other numbers: bf16 is a different recipe


def test_chat_template_rows_are_not_asked_for_eos():
    """A chat template ends the assistant turn with its own end-of-turn text (SmolLM2: no EOS id):
    the within-run EOS expectation is for plain-text rows only (the small profile's false alarm)."""
    prof = load_profile("tiny")
    spec, cfg = prof.models["llama"], prof.train
    plain = applied.asked(spec, cfg, 10, applied.logged_steps(cfg.steps))
    chat = applied.asked(spec, cfg, 10, applied.logged_steps(cfg.steps), chat=True)
    assert plain["untruncated_rows_without_eos"] == 0 and "untruncated_rows_without_eos" not in chat
    assert applied.compare({"untruncated_rows_without_eos": 454}, chat) == []
