"""The ``sft`` trainer: trl's ``SFTTrainer`` with the profile's recipe (the ``paper`` GPU profile
uses it). ``[train] packing = true`` is trl's ``padding_free``."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from .. import progress
from ..model.bases import cpu_precision
from ..model.params import lora_config, real_param_count
from ..resources import PeakMemory, Timer
from ..specs import ModelSpec, TrainConfig
from . import applied
from .common import TrainStats, check_losses, make_stats, mixed_precision, trainable_to_fp32
from .lean import canary_prompt_ids


def sft_config(cfg: TrainConfig, out_dir: str, device: str, family: str | None = None) -> Any:
    from trl import SFTConfig  # type: ignore[attr-defined]  # trl's lazy module exports it at run time

    cuda = device.startswith("cuda")
    precision = mixed_precision(device, family) if cuda else cpu_precision(cfg)
    return SFTConfig(
        output_dir=out_dir,
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(0, round(cfg.warmup_ratio * cfg.steps)),
        optim=cfg.optimizer,
        max_length=cfg.max_length,
        seed=cfg.seed,
        data_seed=cfg.seed,
        # trl turns it on by default; on small models it costs ~27% for identical losses.
        gradient_checkpointing=cuda and cfg.max_length >= 1024,
        use_cpu=not cuda,
        bf16=precision == "bf16",
        fp16=precision == "fp16",  # the Trainer scales the loss (GradScaler) under fp16
        logging_steps=max(1, cfg.steps // 10),
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        padding_free=cfg.packing,
        dataloader_num_workers=0,
    )


class _PadCounter:
    """Wraps a collator and counts the pad tokens of every batch it builds."""

    def __init__(self, collate: Any):
        self.collate = collate
        self.pad = self.total = 0

    def __call__(self, examples: list[Any]) -> Any:
        batch = self.collate(examples)
        ids = batch["input_ids"]
        self.total += ids.numel()
        self.pad += ids.numel() - sum(len(e["input_ids"]) for e in examples)
        return batch


def fine_tune_sft(
    model: Any, tokenizer: Any, spec: ModelSpec, rows: list[dict[str, Any]], cfg: TrainConfig, out_dir: Path, device: str
) -> TrainStats:
    from datasets import Dataset
    from trl import SFTTrainer  # type: ignore[attr-defined]  # as above

    with tempfile.TemporaryDirectory(prefix="medqa-sft-") as scratch:
        trainer = SFTTrainer(
            model=model,
            args=sft_config(cfg, scratch, device, spec.family),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=lora_config(spec, cfg),
        )
        trainable_to_fp32(trainer.model)  # trl casts a 4-bit model's LoRA weights to bf16
        if progress.active():
            trainer.add_callback(_progress_callback(cfg.steps))
        counter = _PadCounter(trainer.data_collator)
        trainer.data_collator = counter
        peft_model: Any = trainer.model  # the PeftModel trl wrapped (typed by trl as Module | None)
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        total = real_param_count(peft_model)  # a 4-bit weight counts its real values, not its packed bytes
        with PeakMemory(device) as mem, Timer() as t:
            trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        check_losses(spec, losses)
        rates = [h["learning_rate"] for h in trainer.state.log_history if "loss" in h and "learning_rate" in h]
        recipe = applied.applied(peft_model, trainer.optimizer, rates, _examples(trainer.train_dataset, cfg.max_length),
                                 tokenizer, cfg.max_length, canary_prompt_ids(tokenizer))
        args_ = trainer.args
        recipe["autocast"] = "bfloat16" if args_.bf16 else ("float16" if args_.fp16 else "none")
        tokens = int(trainer.state.num_input_tokens_seen)
        peft_model.save_pretrained(str(out_dir))
    return make_stats(t.seconds, t.cpu, tokens, trainable, total, mem, losses, device,
                  counter.pad / counter.total if counter.total else 0.0, "sft", int(trainer.state.global_step), rows,
                  recipe)


def _examples(dataset: Any, max_length: int) -> list[tuple[list[int], list[int]]] | None:
    """(input ids, labels) of the rows as trl prepared them (its ``labels`` column, -100 where no
    loss; or, in trl versions without it, its ``completion_mask``), truncated to ``max_length``;
    None when trl keeps neither."""
    cols = dataset.column_names
    if "labels" in cols:
        return [(list(i)[:max_length], list(lab)[:max_length]) for i, lab in zip(dataset["input_ids"], dataset["labels"])]
    if "completion_mask" in cols:
        out = []
        for ids, mask in zip(dataset["input_ids"], dataset["completion_mask"]):
            ids, mask = list(ids)[:max_length], list(mask)[:max_length]
            out.append((ids, [t if m else -100 for t, m in zip(ids, mask)]))
        return out
    return None


def _progress_callback(steps: int) -> Any:
    """A Trainer callback that reports each optimizer step (throttled) and the last logged loss."""
    from transformers import TrainerCallback

    tracker = progress.Tracker("train", steps, "step")

    class _Progress(TrainerCallback):
        loss: float | None = None

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            tracker.update(state.global_step, **({"loss": self.loss} if self.loss is not None else {}))

    return _Progress()
