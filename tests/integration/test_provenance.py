"""Provenance and cache keys on GPU (issue 13, item 9), checked on the CPU: the GPU model, driver,
CUDA and bitsandbytes versions key every stage and go into the records; a hub model is keyed on
the commit its revision resolves to (from a hub cache laid out on disk, offline); a 4-bit model
counts its real parameters, not its packed bytes."""
from __future__ import annotations

import dataclasses
import subprocess

import pytest
from helpers import small_tiny_llama

from medqa_core import resources
from medqa_core.cache import content_key
from medqa_core.data.datasets import QAExample
from medqa_core.errors import ConfigError
from medqa_core.profile import load_profile
from medqa_core.specs import ModelSpec, TrainConfig

# ---------------------------------------------------------------- GPU, driver, CUDA, bitsandbytes


@pytest.fixture
def fake_gpu(monkeypatch):
    import torch

    state = {"driver": "550.54.15", "bnb": "0.50.2"}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H200")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(resources, "_driver_version", lambda: state["driver"])
    real = resources.library_versions()
    monkeypatch.setattr(resources, "library_versions", lambda: {**real, "bitsandbytes": state["bnb"]})
    return state


def test_cpu_numeric_env_is_unchanged():
    """The tiny profile's keys: the same three fields as before (no GPU fields on CPU)."""
    assert set(resources.numeric_env("cpu")) == {"device", "threads", "cpu_capability"}


def test_cuda_numeric_env_names_gpu_driver_cuda_and_bitsandbytes(fake_gpu):
    env = resources.numeric_env("cuda")
    assert env["gpu"] == "NVIDIA H200" and env["driver"] == "550.54.15"
    assert env["cuda"] == "12.8" and env["bitsandbytes"] == "0.50.2"
    assert "cpu_capability" not in env


@pytest.mark.parametrize("change", ["driver", "bnb"])
def test_adapter_key_changes_with_driver_and_bitsandbytes(fake_gpu, change):
    from medqa_core.stages import adapter_payload

    spec = load_profile("tiny").models["llama"]
    rows = [QAExample("a", "q?", "answer.")]
    before = content_key(adapter_payload("base", spec, rows, TrainConfig(), "cuda"))
    fake_gpu[change] = "other"
    assert content_key(adapter_payload("base", spec, rows, TrainConfig(), "cuda")) != before


def test_hardware_record_carries_driver_cuda_bitsandbytes(fake_gpu, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    info = resources.hardware.__wrapped__()
    assert info["gpu"] == "NVIDIA H200" and info["gpu_count"] == 2
    assert (info["gpu_driver"], info["cuda"], info["bitsandbytes"]) == ("550.54.15", "12.8", "0.50.2")


def test_driver_version_from_nvidia_smi_else_the_cuda_driver_api(monkeypatch):
    import torch

    monkeypatch.setattr(resources.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout="550.54.15\n550.54.15\n", stderr=""))
    assert resources._driver_version() == "550.54.15"

    def missing(*a, **k):
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(resources.subprocess, "run", missing)
    monkeypatch.setattr(torch._C, "_cuda_getDriverVersion", lambda: 12040, raising=False)
    assert resources._driver_version() == "cuda-api-12.4"


# ---------------------------------------------------------------- hub revision (offline hub cache)

C1, C2 = "1" * 40, "2" * 40


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A hub cache as huggingface_hub lays it out: refs/<branch> -> commit, snapshots/<commit>/."""
    from huggingface_hub import constants

    root = tmp_path / "hub"
    repo = root / "models--org--tiny-llm"
    for c in (C1, C2):
        (repo / "snapshots" / c).mkdir(parents=True)
        (repo / "snapshots" / c / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(C1)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # never the network in a test
    return repo


def _hub_spec(revision=None):
    return ModelSpec(name="llama", family="llama", hub_id="org/tiny-llm", revision=revision,
                     target_modules=("q_proj",))


def test_hub_base_is_keyed_on_the_resolved_commit(hub_cache, tmp_path):
    from medqa_core.cache import Cache
    from medqa_core.stages import base as base_model

    prof, cache = load_profile("paper"), Cache(tmp_path / "cache")
    art = base_model(prof, _hub_spec(), cache)
    assert art.source == "org/tiny-llm" and art.meta["revision"] == C1 and art.meta["requested_revision"] is None
    (hub_cache / "refs" / "main").write_text(C2)  # upstream moved main
    moved = base_model(prof, _hub_spec(), cache)
    assert moved.meta["revision"] == C2 and moved.key != art.key
    pinned = base_model(prof, _hub_spec(revision=C1), cache)  # `revision` in the model table pins it
    assert pinned.meta["revision"] == C1 and pinned.key == art.key


def test_unresolvable_revision_is_one_line(hub_cache, tmp_path):
    from medqa_core.cache import Cache
    from medqa_core.stages import base as base_model

    with pytest.raises(ConfigError) as info:
        base_model(load_profile("paper"), _hub_spec(revision="v9"), Cache(tmp_path / "c"))
    assert "org/tiny-llm" in str(info.value) and "\n" not in str(info.value)


def test_local_checkpoint_dir_needs_no_hub(tmp_path):
    from medqa_core.cache import Cache
    from medqa_core.stages import base as base_model

    spec = dataclasses.replace(_hub_spec(), hub_id=str(tmp_path))
    art = base_model(load_profile("paper"), spec, Cache(tmp_path / "c"))
    assert art.source == str(tmp_path) and "revision" not in art.meta and not art.built


# ---------------------------------------------------------------- real parameters of a 4-bit model

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    pytest.importorskip("bitsandbytes")
    return small_tiny_llama(tmp_path_factory)


def test_nf4_model_counts_real_parameters(tiny_dir):
    from medqa_core.model.bases import load_base
    from medqa_core.model.params import real_param_count

    src, spec, n_float = tiny_dir
    model = load_base(src, spec, quantization="nf4", device="cpu")
    packed = sum(p.numel() for p in model.parameters())
    assert packed < n_float  # what the old count reported: packed 4-bit bytes
    assert real_param_count(model) == n_float
    assert real_param_count(load_base(src, spec, "none", "cpu")) == n_float


def test_qlora_stats_total_params_is_the_real_count(tiny_dir, tmp_path):
    from medqa_core.model.bases import load_base, load_tokenizer
    from medqa_core.train.finetune import fine_tune

    src, spec, n_float = tiny_dir
    rows = [QAExample(f"id{i}", f"What helps condition {i}?", f"Rest helps condition {i}.") for i in range(8)]
    cfg = TrainConfig(steps=2, batch_size=4, max_length=48, lora_r=4, lora_alpha=8, quantization="nf4",
                      learning_rate=1e-3, trainer="lean")
    stats = fine_tune(load_base(src, spec, "nf4", "cpu"), load_tokenizer(src), spec, rows, cfg, tmp_path / "a", "cpu")
    assert stats.total_params == n_float + stats.trainable_params
