"""LoRA / QLoRA fine-tuning with peft + trl's SFTTrainer; adapters cached by content hash."""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .cache import Cache, source_digest
from .datasets import QAExample
from .errors import TrainingError
from .prompts import training_rows
from .resources import PeakMemory, Timer, library_versions
from .specs import ModelSpec, TrainConfig

log = logging.getLogger(__name__)


@dataclass
class TrainStats:
    train_seconds: float
    tokens_per_s: float  # non-padding tokens seen per second of training
    tokens_seen: int
    trainable_params: int
    total_params: int
    peak_mem_mib: float  # memory the training itself needed (VRAM on CUDA, RSS delta on CPU)
    peak_mem_abs_mib: float
    loss_first: float
    loss_last: float
    device: str


def lora_config(spec: ModelSpec, cfg: TrainConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(spec.target_modules),
        task_type="CAUSAL_LM",
        bias="none",
    )


def sft_config(cfg: TrainConfig, out_dir: str, device: str) -> Any:
    from trl import SFTConfig

    cuda = device == "cuda"
    bf16 = cuda and _bf16_ok()
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
        bf16=bf16,
        fp16=cuda and not bf16,
        logging_steps=max(1, cfg.steps // 10),
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
    )


def _bf16_ok() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def fine_tune(
    model: Any, tokenizer: Any, spec: ModelSpec, train: list[QAExample], cfg: TrainConfig, out_dir: Path, device: str
) -> TrainStats:
    """Train a LoRA adapter on ``train`` and save it (adapter only) into ``out_dir``."""
    from datasets import Dataset
    from trl import SFTTrainer

    if cfg.quantization == "nf4":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.max_length >= 1024)
    rows = training_rows(tokenizer, [(e.question, e.answer) for e in train])
    tokenizer.padding_side = "right"
    with tempfile.TemporaryDirectory(prefix="medqa-sft-") as scratch:
        trainer = SFTTrainer(
            model=model,
            args=sft_config(cfg, scratch, device),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=lora_config(spec, cfg),
        )
        peft_model = trainer.model
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in peft_model.parameters())
        with PeakMemory(device) as mem, Timer() as t:
            trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        if not losses or not all(math.isfinite(x) for x in losses):
            raise TrainingError(
                f"model {spec.name!r}: training diverged or logged no loss ({losses[-3:]}); "
                "lower [train] learning_rate or check the data"
            )
        tokens = int(trainer.state.num_input_tokens_seen)
        peft_model.save_pretrained(str(out_dir))
    tokenizer.padding_side = "left"
    return TrainStats(
        train_seconds=round(t.seconds, 3),
        tokens_per_s=round(tokens / t.seconds, 1) if t.seconds > 0 else 0.0,
        tokens_seen=tokens,
        trainable_params=trainable,
        total_params=total,
        peak_mem_mib=round(mem.peak_mib, 1),
        peak_mem_abs_mib=round(mem.peak_abs_mib, 1),
        loss_first=round(losses[0], 4),
        loss_last=round(losses[-1], 4),
        device=device,
    )


def adapter_payload(base_key: Any, spec: ModelSpec, data_fingerprint: str, cfg: TrainConfig, device: str) -> dict:
    return {
        "what": "lora-adapter",
        "base": base_key,
        "targets": list(spec.target_modules),
        "data": data_fingerprint,
        # prompts.py holds the plain template; a chat template comes with the base (its key pins the revision)
        "code": source_digest("training.py", "prompts.py", "models.py"),
        "train": asdict(cfg),
        "device": device,
        "versions": library_versions(),
    }


def cached_adapter(
    cache: Cache, payload: dict, load_model: Any, load_tokenizer: Any, spec: ModelSpec,
    train: list[QAExample], cfg: TrainConfig, device: str, launch_job: dict[str, Any] | None = None,
) -> tuple[Path, TrainStats, bool, str]:
    """(adapter dir, stats recorded when it was trained, built now?, cache key); trains if not cached.

    ``load_model`` and ``load_tokenizer`` are called only when the adapter must be trained. With
    ``cfg.num_processes > 1`` the training runs under torchrun instead (``launch_job`` says
    which profile/case the processes rebuild; see launch.py).
    """

    def build(tmp: Path) -> dict[str, Any]:
        log.info("fine-tuning %s on %d examples (%d steps, %d process(es))", spec.name, len(train), cfg.steps,
                 cfg.num_processes)
        if cfg.num_processes > 1:
            from .launch import run_distributed

            if launch_job is None:
                raise TrainingError(f"model {spec.name!r}: num_processes={cfg.num_processes} needs a launch job")
            raw = run_distributed(launch_job, cfg.num_processes, tmp / "launch")
            (tmp / "launch" / "adapter").rename(tmp / "adapter")
            shutil.rmtree(tmp / "launch")
            world = raw.pop("world_size")
            return {"stats": raw, "world_size": world}
        stats = fine_tune(load_model(), load_tokenizer(), spec, train, cfg, tmp / "adapter", device)
        return {"stats": asdict(stats)}

    entry = cache.get_or_build("adapter", payload, build)
    return entry.path / "adapter", TrainStats(**entry.meta["stats"]), entry.built, entry.key


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
