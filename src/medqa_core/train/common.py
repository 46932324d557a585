"""What both trainers share: the stats they return, the training float format, fp32 LoRA
weights, the loss check."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..cache import content_key
from ..errors import TrainingError
from ..model.bases import cuda_precision
from ..resources import PeakMemory
from ..specs import ModelSpec


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
    pad_fraction: float = 0.0  # pad tokens / all tokens fed to the model, over all training batches
    trainer: str = "sft"
    steps_run: int = 0  # optimizer steps actually taken
    rows: int = 0  # training rows the loop was given
    rows_digest: str = ""  # content digest of those rows (prompt + completion text)
    train_cpu_seconds: float = 0.0  # CPU seconds of the training loop, all threads of this process
    recipe: dict[str, Any] = field(default_factory=dict)  # the recipe as applied (train/applied.py)


def mixed_precision(device: str, family: str | None = None) -> str:
    """Autocast format of training on ``device``: ``fp32`` (none) on the CPU; on CUDA ``bf16``
    where the GPU has it natively, else ``fp16`` with loss scaling, or ``fp32`` for Gemma 2
    (fp16 overflows): :func:`model.bases.cuda_precision`, the format the base model loads in."""
    return cuda_precision(family) if device.startswith("cuda") else "fp32"


def trainable_to_fp32(model: Any) -> int:
    """Cast the trainable (LoRA) parameters to float32 in place; returns how many were cast.

    Under bf16/fp16 autocast the forward still computes in half precision, but the weights and
    the optimizer's updates stay fp32: at lr 2e-5 a bf16 weight (8 significant bits) would
    swallow most updates. trl casts a quantized model's LoRA weights to bf16; this undoes it.
    """
    import torch

    n = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
            n += 1
    return n


def check_losses(spec: ModelSpec, losses: list[float]) -> None:
    if not losses or not all(math.isfinite(x) for x in losses):
        raise TrainingError(
            f"model {spec.name!r}: training diverged or logged no loss ({losses[-3:]}); "
            "lower [train] learning_rate or check the data"
        )



def make_stats(seconds: float, cpu: float, tokens: int, trainable: int, total: int, mem: PeakMemory, losses: list[float],
           device: str, pad_fraction: float, trainer: str, steps_run: int, rows: list[dict[str, Any]],
           recipe: dict[str, Any] | None = None) -> TrainStats:
    return TrainStats(
        recipe=recipe or {},
        steps_run=steps_run,
        rows=len(rows),
        rows_digest=content_key(rows)[:16],
        train_seconds=round(seconds, 3),
        train_cpu_seconds=round(cpu, 3),
        tokens_per_s=round(tokens / seconds, 1) if seconds > 0 else 0.0,
        tokens_seen=tokens,
        trainable_params=trainable,
        total_params=total,
        peak_mem_mib=round(mem.peak_mib, 1),
        peak_mem_abs_mib=round(mem.peak_abs_mib, 1),
        loss_first=round(losses[0], 4),
        loss_last=round(losses[-1], 4),
        device=device,
        pad_fraction=round(pad_fraction, 4),
        trainer=trainer,
    )
