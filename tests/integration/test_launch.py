"""Data-parallel training of one model through torchrun (launch.py), on CPU with two processes
(gloo): the same code path a multi-GPU machine takes with ``[train] num_processes``."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

from medqa_core.cache import Cache, content_key
from medqa_core.data.split import load_split
from medqa_core.errors import ConfigError
from medqa_core.model.bases import load_base
from medqa_core.profile import load_profile
from medqa_core.stages import adapter, adapter_payload
from medqa_core.stages import base as base_model

REPO = Path(__file__).resolve().parents[2]


def small_profile(tmp_path: Path, num_processes: int) -> Path:
    text = (REPO / "profiles" / "tiny.toml").read_text().replace('"../', f'"{REPO}/')  # paths are relative to the file
    text = text.replace("steps = 300", "steps = 10").replace("steps = 200", "steps = 4")
    text = text.replace('trainer = "lean"', 'trainer = "sft"')  # data-parallel training goes through the Trainer
    text = text.replace("packing = false\n", f"packing = false\nnum_processes = {num_processes}\n", 1)
    p = tmp_path / "prof.toml"
    p.write_text(text)
    return p


def test_one_model_trained_on_two_processes_via_torchrun(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    prof = load_profile(small_profile(tmp_path, 2))
    assert prof.train.num_processes == 2 and prof.train.steps == 4
    spec, dspec = prof.models["llama"], prof.datasets["wikidoc"]
    cache = Cache(tmp_path / "cache")
    data = load_split(dspec, prof.data_dir, prof.split)
    base = base_model(prof, spec, cache)
    base_src = base.source
    from medqa_core.train import launch

    job = launch.job_for(data.train, spec, prof.train, base_src, "cpu", "llama-wikidoc")
    distributed = partial(launch.run_distributed, job, prof.train.num_processes)
    from medqa_core.model import bases

    monkeypatch.setattr(bases, "load_base", lambda *a, **k: pytest.fail("the launching process must not load the model"))
    monkeypatch.setattr(bases, "load_tokenizer",
                        lambda *a, **k: pytest.fail("the launching process must not load the tokenizer"))
    art = adapter(cache, base, spec, data.train, prof.train, "cpu", distributed)
    assert art.built and art.key == content_key(adapter_payload(base.key, spec, data.train, prof.train, "cpu"))
    stats, path = art.value, Path(art.source)
    entry_meta = json.loads((path.parent / "meta.json").read_text())
    assert entry_meta["world_size"] == 2
    assert stats.loss_first > 0 and stats.tokens_seen > 0 and stats.device == "cpu"
    weights = load_file(str(path / "adapter_model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().sum()) > 0 for v in lora_b)  # B starts at zero: it was trained
    # the adapter loads onto the base like any other
    from peft import PeftModel

    PeftModel.from_pretrained(load_base(base_src, spec), str(path))
    # a second call is a cache hit, no launch
    again = adapter(cache, base, spec, data.train, prof.train, "cpu", None)
    assert again.built is False and again.key == art.key and again.value == stats


def test_adapter_key_covers_rows_code_and_numerics(tmp_path, monkeypatch):
    """The adapter's cache key: the exact training rows (not the file's fingerprint), the whole
    pipeline's code digest and the numeric environment."""
    from medqa_core import cache as cache_mod
    from medqa_core import resources
    from medqa_core.cache import content_key

    prof = load_profile(small_profile(tmp_path, 1))
    spec = prof.models["llama"]
    data = load_split(prof.datasets["wikidoc"], prof.data_dir, prof.split)
    payload = adapter_payload("base-key", spec, data.train, prof.train, "cpu")
    assert payload["code"] == cache_mod.code_digest()
    assert payload["numeric"] == resources.numeric_env("cpu")
    assert payload["rows"] == content_key([[e.id, e.question, e.answer] for e in data.train])
    key = content_key(payload)
    assert content_key(adapter_payload("base-key", spec, data.train, prof.train, "cpu")) == key  # stable
    changed_row = [dataclasses.replace(data.train[0], answer=data.train[0].answer + " ."), *data.train[1:]]
    assert content_key(adapter_payload("base-key", spec, changed_row, prof.train, "cpu")) != key
    assert content_key(adapter_payload("base-key", spec, data.train[1:], prof.train, "cpu")) != key
    assert content_key(adapter_payload("other-base", spec, data.train, prof.train, "cpu")) != key
    seeded = dataclasses.replace(prof.train, seed=prof.train.seed + 1)
    assert content_key(adapter_payload("base-key", spec, data.train, seeded, "cpu")) != key
    from medqa_core import stages

    monkeypatch.setattr(stages, "code_digest", lambda: "other-code")
    assert content_key(adapter_payload("base-key", spec, data.train, prof.train, "cpu")) != key
    monkeypatch.undo()
    monkeypatch.setattr(stages, "numeric_env", lambda device="cpu": {"device": device, "threads": 999})
    assert content_key(adapter_payload("base-key", spec, data.train, prof.train, "cpu")) != key


def test_torchrun_worker_trains_with_the_run_seed(tmp_path, monkeypatch):
    """The launching process passes the recipe as it runs (run seed from --seeds, --set values)
    and the rows in the job; each torchrun process trains with exactly those, without reading
    the profile or re-splitting the data."""
    from medqa_core import profile as profile_mod
    from medqa_core import resources
    from medqa_core.data import datasets
    from medqa_core.data import split as split_mod
    from medqa_core.model import bases as models
    from medqa_core.train import finetune as training
    from medqa_core.train import launch

    prof = load_profile(small_profile(tmp_path, 2))
    spec = prof.models["llama"]
    rows = load_split(prof.datasets["wikidoc"], prof.data_dir, prof.split).train[:10]
    seen = {}

    class Stop(Exception):
        pass

    def fake_fine_tune(model, tok, spec, rows, cfg, out, device):
        seen.update(cfg=cfg, rows=rows, spec=spec)
        raise Stop

    def boom(*a, **k):
        raise AssertionError("a torchrun process must not reload the profile or the data")

    monkeypatch.setattr(training, "fine_tune", fake_fine_tune)
    monkeypatch.setattr(models, "load_base", lambda *a, **k: object())
    monkeypatch.setattr(models, "load_tokenizer", lambda *a, **k: object())
    monkeypatch.setattr(resources, "configure_threads", lambda n: n)
    monkeypatch.setattr(profile_mod, "load_profile", boom)
    monkeypatch.setattr(datasets, "load_examples", boom)
    monkeypatch.setattr(split_mod, "load_split", boom)
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    run_cfg = replace(prof.train, seed=prof.train.seed + 7, learning_rate=1e-4)  # --seeds, --set
    job = {**launch.job_for(rows, spec, run_cfg, "base-dir", "cpu", "llama-wikidoc"), "out": str(tmp_path / "out")}
    job = json.loads(json.dumps(job))  # as the worker reads it from the job file
    with pytest.raises(Stop):
        launch._worker(job)
    cfg = seen["cfg"]
    assert cfg.batch_size == prof.train.batch_size // 2  # the global batch split over the processes
    assert cfg.seed == prof.train.seed + 7
    assert cfg.learning_rate == 1e-4
    assert seen["rows"] == rows
    assert seen["spec"] == spec


def test_num_processes_must_be_positive_and_use_the_trainer(tmp_path):
    with pytest.raises(ConfigError, match="num_processes"):
        load_profile(small_profile(tmp_path, 0))
    lean = tmp_path / "lean.toml"
    lean.write_text(small_profile(tmp_path, 2).read_text().replace('trainer = "sft"', 'trainer = "lean"'))
    with pytest.raises(ConfigError, match="num_processes=2 needs trainer = 'sft'"):
        load_profile(lean)
