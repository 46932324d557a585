"""LoRA / QLoRA fine-tuning with the profile's trainer (``[train] trainer``):

- ``sft`` (default, :mod:`.sft`): trl's ``SFTTrainer``; the ``paper`` GPU profile uses it.
- ``lean`` (:mod:`.lean`): a plain PyTorch loop with the same recipe, without the Trainer's
  per-step costs (the tiny CPU profile uses it).

Both take the rows as prompt/completion pairs (``model.prompts.training_rows``), save the
adapter only, and return :class:`TrainStats`. The adapter's cache entry is ``stages.adapter``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..data.datasets import QAExample
from ..model.prompts import training_rows
from ..specs import ModelSpec, TrainConfig
from . import applied
from .common import TrainStats
from .lean import fine_tune_lean
from .sft import fine_tune_sft


def fine_tune(
    model: Any, tokenizer: Any, spec: ModelSpec, train: list[QAExample], cfg: TrainConfig, out_dir: Path, device: str
) -> TrainStats:
    """Train a LoRA adapter on ``train`` with the profile's trainer and save it (adapter only) into ``out_dir``."""
    if cfg.quantization == "nf4":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.max_length >= 1024)
    rows = training_rows(tokenizer, [(e.question, e.answer) for e in train])
    tokenizer.padding_side = "right"
    try:
        if cfg.trainer == "lean":
            stats = fine_tune_lean(model, tokenizer, spec, rows, cfg, out_dir, device)
        else:
            stats = fine_tune_sft(model, tokenizer, spec, rows, cfg, out_dir, device)
    finally:
        tokenizer.padding_side = "left"
    # what the profile asked, computed without the trainers' code (train/applied.py), beside what ran
    stats.recipe = {"applied": stats.recipe,
                    "asked": applied.asked(spec, cfg, stats.trainable_params, applied.logged_steps(cfg.steps),
                                          "cpu" if not device.startswith("cuda") else device,
                                          chat=bool(getattr(tokenizer, "chat_template", None)))}
    return stats


__all__ = ["TrainStats", "fine_tune"]

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
