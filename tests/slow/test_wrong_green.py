"""The wrong-green search (issue 24, nightly): for every profile field a stage can read, a run
served from a cache filled by the *unchanged* profile must agree with a cold run of the changed
profile - same error, or the same scores, controls and invariants. A field missing from a stage's
key would give the warm run the unchanged profile's entries (the `attn_implementation = "sdpa"`
defect: green in 2 s warm, a ValueError cold).

Every field of the dataclasses a stage receives is listed: with a changed value the real
pipeline runs it, or with the reason it cannot run offline (then tests/integration/test_cache_keys.py, which
checks the key without running, is its guard). A new field fails here until it is listed.
Slow (about 80 short cases): the nightly CPU workflow runs it (`-m slow`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from medqa_core import pipeline
from medqa_core.cache import Cache
from medqa_core.metrics import ScorerConfig
from medqa_core.profile import load_profile
from medqa_core.specs import GenerationConfig, ModelSpec, SplitConfig, TrainConfig

MODEL, DATASET = "gemma", "wikidoc"  # Gemma 2: the family that cannot run sdpa

#: (dataclass, field) -> a changed value the pipeline runs offline, or a reason it cannot
CHANGES: dict[tuple[type, str], Any] = {
    (ModelSpec, "name"): "NOT RUN: a label; the case id is derived from it, so no second case shares its entries",
    (ModelSpec, "family"): "NOT RUN: another family needs another checkpoint (keyed through hub_id's files)",
    (ModelSpec, "hub_id"): "NOT RUN: a hub id needs the network; another local checkpoint is keyed by its files "
                           "(test_cache_keys)",
    (ModelSpec, "revision"): "NOT RUN: a revision is resolved on the hub; keyed by the commit (test_cache_keys)",
    (ModelSpec, "tiny_config"): "NOT RUN: with a shipped checkpoint the checkpoint's own config loads; "
                                "keyed for pretrained tiny bases (test_cache_keys)",
    (ModelSpec, "target_modules"): ("q_proj", "v_proj"),
    (ModelSpec, "attn_implementation"): "sdpa",
    (ModelSpec, "tokenizer"): "NOT RUN: another tokenizer breaks the shipped checkpoint's vocabulary; keyed by its "
                              "files (test_cache_keys)",
    (ModelSpec, "arch_config"): "NOT RUN: read only to count LoRA parameters offline, outside every stage",
    (ModelSpec, "gguf"): "NOT RUN: needs the small extra's GGUF package; keyed by the file's digest (test_cache_keys)",
    (ModelSpec, "unavailable"): "NOT RUN: the case is skipped before any stage",
    (ModelSpec, "checkpoint"): "NOT RUN: the profile names its base by hub_id; keyed by files (test_cache_keys)",
    (ModelSpec, "local_dir"): "NOT RUN: derived from hub_id",
    (TrainConfig, "steps"): 4,
    (TrainConfig, "learning_rate"): 1e-3,
    (TrainConfig, "batch_size"): 2,
    (TrainConfig, "max_length"): 64,
    (TrainConfig, "lora_r"): 4,
    (TrainConfig, "lora_alpha"): 8,
    (TrainConfig, "lora_dropout"): 0.1,
    (TrainConfig, "optimizer"): "adamw_torch_fused",
    (TrainConfig, "quantization"): "NOT RUN: nf4 needs bitsandbytes' CUDA kernels",
    (TrainConfig, "warmup_ratio"): 0.5,
    (TrainConfig, "seed"): 7,
    (TrainConfig, "trainer"): "sft",
    (TrainConfig, "packing"): True,
    (TrainConfig, "num_processes"): "NOT RUN: torchrun over several GPUs",
    (TrainConfig, "cpu_bf16"): True,  # bf16 autocast where native; refused (both ways alike) elsewhere
    (GenerationConfig, "max_new_tokens"): 6,
    (GenerationConfig, "batch_size"): 3,
    (GenerationConfig, "repetition_penalty"): 1.3,
    (GenerationConfig, "cpu_bf16"): True,  # bf16 autocast where native; refused (both ways alike) elsewhere
    (SplitConfig, "test_size"): 6,
    (SplitConfig, "seed"): 5,
    (SplitConfig, "test_fraction"): "NOT RUN: exclusive with test_size, which the base recipe sets",
    (SplitConfig, "near_dup_threshold"): 0.5,
    (SplitConfig, "max_leak_fraction"): 0.0,
    (ScorerConfig, "bertscore_model"): "NOT RUN: another encoder needs the network",
    (ScorerConfig, "bertscore_layer"): 4,
    (ScorerConfig, "bertscore_idf"): True,
    (ScorerConfig, "bertscore_rescale"): True,
    (ScorerConfig, "use_backend"): "NOT RUN: tfhub needs tensorflow and a model download",
    (ScorerConfig, "use_handle"): "NOT RUN: only read by the tfhub backend",
}

SECTIONS = {ModelSpec: None, TrainConfig: "train", GenerationConfig: "generation", SplitConfig: "split",
            ScorerConfig: "scorer"}


def _short(profile: Any) -> Any:
    """The tiny profile cut to a seconds-long case (few steps, a few test rows, short answers)."""
    return dataclasses.replace(
        profile,
        train=dataclasses.replace(profile.train, steps=3, batch_size=4),
        generation=dataclasses.replace(profile.generation, max_new_tokens=8),
        split=dataclasses.replace(profile.split, test_size=8, test_fraction=None),
    )


def _changed(profile: Any, cls: type, name: str, value: Any) -> Any:
    if cls is ModelSpec:
        spec = dataclasses.replace(profile.models[MODEL], **{name: value})
        return dataclasses.replace(profile, models={**profile.models, MODEL: spec})
    attr = SECTIONS[cls]
    return dataclasses.replace(profile, **{attr: dataclasses.replace(getattr(profile, attr), **{name: value})})


def _outcome(profile: Any, cache_dir: Path) -> Any:
    """What a verdict is made of: the scores, controls and invariants - or the error."""
    try:
        r = pipeline.run_case(profile, MODEL, DATASET, pipeline.RunContext(cache=Cache(cache_dir)))
    except Exception as exc:  # noqa: BLE001 - the error class is the outcome
        return ("error", type(exc).__name__)
    return {"metrics": r.metrics, "base": r.base_metrics, "controls": {k: v["metrics"] for k, v in r.controls.items()},
            "invariants": {k: v for k, v in r.invariants.items() if k != "scorer_canary"}}


def test_every_field_is_listed():
    for cls in SECTIONS:
        for f in dataclasses.fields(cls):
            assert (cls, f.name) in CHANGES, f"{cls.__name__}.{f.name}: add a changed value (or why it cannot run) to CHANGES"


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """A cache filled by the unchanged (short) profile."""
    from medqa_core.resources import configure_threads

    configure_threads(1)
    cache = tmp_path_factory.mktemp("warm")
    base = _short(load_profile("tiny"))
    _outcome(base, cache)
    return base, cache


RUNNABLE = [(c, n, v) for (c, n), v in CHANGES.items() if not (isinstance(v, str) and v.startswith("NOT RUN"))]


@pytest.mark.parametrize("cls,name,value", RUNNABLE, ids=[f"{c.__name__}.{n}" for c, n, _ in RUNNABLE])
def test_warm_and_cold_agree(filled, tmp_path, cls, name, value):
    base, warm_cache = filled
    profile = _changed(base, cls, name, value)
    cold = _outcome(profile, tmp_path / "cold")
    warm = _outcome(profile, warm_cache)
    assert warm == cold, f"{cls.__name__}.{name} = {value!r}: the warm run disagrees with the cold one (a key misses it)"
