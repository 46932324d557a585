"""The paper profile's QLoRA path (bitsandbytes NF4 + LoRA through our training code) on a tiny
model on the CPU: the same code the GPU run takes, minus CUDA. Skips where bitsandbytes is absent."""
from __future__ import annotations

import math

import pytest
from helpers import small_tiny_llama

from medqa_core.data.datasets import QAExample
from medqa_core.profile import load_profile
from medqa_core.specs import TrainConfig


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    pytest.importorskip("bitsandbytes")
    return small_tiny_llama(tmp_path_factory)[:2]


def test_nf4_load_quantizes_linear_layers(tiny_dir):
    bnb = pytest.importorskip("bitsandbytes")

    from medqa_core.model.bases import load_base

    src, spec = tiny_dir
    model = load_base(src, spec, quantization="nf4", device="cpu")
    linear4 = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linear4 and all(any(t in n for t in ("proj",)) for n in linear4)
    assert model.config.quantization_config.bnb_4bit_quant_type == "nf4"


def test_qlora_fine_tune_trains_only_lora_weights(tiny_dir, tmp_path):
    from medqa_core.model.bases import load_base, load_tokenizer
    from medqa_core.train.finetune import fine_tune

    src, spec = tiny_dir
    rows = [QAExample(f"id{i}", f"What helps condition {i}?", f"Rest and fluids help condition {i}.") for i in range(16)]
    cfg = TrainConfig(steps=3, batch_size=4, max_length=64, lora_r=4, lora_alpha=8, quantization="nf4",
                      learning_rate=1e-3)
    stats = fine_tune(load_base(src, spec, "nf4", "cpu"), load_tokenizer(src), spec, rows, cfg, tmp_path / "a", "cpu")
    assert stats.tokens_seen > 0 and math.isfinite(stats.loss_last)
    assert 0 < stats.trainable_params < stats.total_params
    assert (tmp_path / "a" / "adapter_config.json").is_file()
    from safetensors.torch import load_file

    saved = set(load_file(str(tmp_path / "a" / "adapter_model.safetensors")))
    assert saved and all("lora_" in k for k in saved)


def test_peak_memory_cuda_accounting(monkeypatch):
    """VRAM is peak allocated during the block minus what was allocated before it."""
    import torch

    from medqa_core.resources import PeakMemory

    state = {"alloc": 1000 * 2**20, "peak": 0}
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: state["alloc"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: state.update(peak=state["alloc"]))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: state["peak"])
    with PeakMemory("cuda") as mem:
        state["peak"] = 3000 * 2**20  # the block peaked 2000 MiB above where it started
    assert mem.peak_mib == pytest.approx(2000.0)
    assert mem.peak_abs_mib == pytest.approx(3000.0)


def test_paper_recipe_maps_to_trainer_options():
    from medqa_core.train.sft import sft_config

    paper = load_profile("paper").train
    cfg = sft_config(paper, "/tmp/unused", "cpu")
    assert (cfg.max_steps, cfg.learning_rate, cfg.per_device_train_batch_size, cfg.max_length) == (2000, 2e-5, 8, 2048)
    assert cfg.optim == "adamw_8bit"
    assert not cfg.bf16 and not cfg.fp16  # CPU: full precision
