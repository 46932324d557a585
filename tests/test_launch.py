"""Data-parallel training of one model through torchrun (launch.py), on CPU with two processes
(gloo): the same code path a multi-GPU machine takes with ``[train] num_processes``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from medqa_core.cache import Cache
from medqa_core.datasets import load_split
from medqa_core.errors import ConfigError
from medqa_core.models import base_model_dir, load_base, load_tokenizer
from medqa_core.specs import load_profile
from medqa_core.training import adapter_payload, cached_adapter

REPO = Path(__file__).resolve().parents[1]


def small_profile(tmp_path: Path, num_processes: int) -> Path:
    text = (REPO / "profiles" / "tiny.toml").read_text()
    text = text.replace("steps = 300", "steps = 10").replace("steps = 200", "steps = 4")
    text = text.replace('trainer = "lean"', 'trainer = "sft"')  # data-parallel training goes through the Trainer
    text = text.replace("packing = false\n", f"packing = false\nnum_processes = {num_processes}\n", 1)
    p = tmp_path / "prof.toml"
    p.write_text(text)
    return p


def test_one_model_trained_on_two_processes_via_torchrun(tmp_path):
    from safetensors.torch import load_file

    prof = load_profile(small_profile(tmp_path, 2))
    assert prof.train.num_processes == 2 and prof.train.steps == 4
    spec, dspec = prof.models["llama"], prof.datasets["wikidoc"]
    cache = Cache(tmp_path / "cache")
    data = load_split(dspec, prof.data_dir, prof.split)
    base_src, meta = base_model_dir(prof, spec, cache)
    payload = adapter_payload(meta["key"], spec, data.fingerprint(), prof.train, "cpu")
    job = {"profile": str(prof.path), "data_dir": str(prof.data_dir), "cache": str(cache.root),
           "model": "llama", "dataset": "wikidoc", "device": "cpu"}
    adapter, stats, built, key = cached_adapter(
        cache, payload, lambda: pytest.fail("the launching process must not load the model"),
        lambda: load_tokenizer(base_src), spec, data.train, prof.train, "cpu", job)
    assert built
    entry_meta = json.loads((adapter.parent / "meta.json").read_text())
    assert entry_meta["world_size"] == 2
    assert stats.loss_first > 0 and stats.tokens_seen > 0 and stats.device == "cpu"
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().sum()) > 0 for v in lora_b)  # B starts at zero: it was trained
    # the adapter loads onto the base like any other
    from peft import PeftModel

    PeftModel.from_pretrained(load_base(base_src, spec), str(adapter))
    # a second call is a cache hit, no launch
    again = cached_adapter(cache, payload, None, None, spec, data.train, prof.train, "cpu", job)
    assert again[2] is False and again[3] == key


def test_num_processes_must_be_positive_and_use_the_trainer(tmp_path):
    with pytest.raises(ConfigError, match="num_processes"):
        load_profile(small_profile(tmp_path, 0))
    lean = tmp_path / "lean.toml"
    lean.write_text(small_profile(tmp_path, 2).read_text().replace('trainer = "sft"', 'trainer = "lean"'))
    with pytest.raises(ConfigError, match="num_processes=2 needs trainer = 'sft'"):
        load_profile(lean)
