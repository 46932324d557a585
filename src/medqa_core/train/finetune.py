"""LoRA / QLoRA fine-tuning; adapters cached by content hash.

Two trainers, chosen by the profile's ``[train] trainer``:

- ``sft`` (default): trl's ``SFTTrainer`` (the ``paper`` GPU profile uses it).
- ``lean``: a plain PyTorch loop with the same recipe (completion-only loss, EOS appended,
  AdamW, linear warm-up + cosine decay, gradient clipping at 1.0, seeded shuffling) and none of
  the Trainer's machinery. On the tiny CPU models the Trainer's fixed per-step costs (trl's
  chunked log-prob LM head, callbacks, logging) were ~35% of the step time.

``[train] packing = true`` trains padding-free: the rows of a batch are concatenated into one
sequence whose ``position_ids`` restart at 0 for each row, so attention stays within a row
(transformers builds the block-diagonal mask from the position ids; flash-attention kernels
use them as varlen boundaries) and no pad token is computed. With ``sft`` this is trl's
``padding_free``.
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import progress
from ..cache import content_key
from ..data.datasets import QAExample
from ..errors import TrainingError
from ..model.bases import cuda_precision
from ..model.params import lora_config, real_param_count
from ..model.prompts import training_rows
from ..resources import PeakMemory, Timer
from ..specs import ModelSpec, TrainConfig

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
    pad_fraction: float = 0.0  # pad tokens / all tokens fed to the model, over all training batches
    trainer: str = "sft"
    steps_run: int = 0  # optimizer steps actually taken
    rows: int = 0  # training rows the loop was given
    rows_digest: str = ""  # content digest of those rows (prompt + completion text)
    train_cpu_seconds: float = 0.0  # CPU seconds of the training loop, all threads of this process


def sft_config(cfg: TrainConfig, out_dir: str, device: str, family: str | None = None) -> Any:
    from trl import SFTConfig

    cuda = device.startswith("cuda")
    precision = mixed_precision(device, family)
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


def mixed_precision(device: str, family: str | None = None) -> str:
    """Autocast format of training on ``device``: ``fp32`` (none) on the CPU; on CUDA ``bf16``
    where the GPU has it natively, else ``fp16`` with loss scaling, or ``fp32`` for Gemma 2
    (fp16 overflows): :func:`models.cuda_precision`, the format the base model loads in."""
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


def _amp(device: str, family: str | None) -> tuple[Any, Any]:
    """(autocast context or None, GradScaler or None) of the lean loop on ``device``."""
    import torch

    precision = mixed_precision(device, family)
    if precision == "fp32":
        return None, None
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    return torch.autocast("cuda", dtype=dtype), scaler


def _unscaled(scaler: Any, opt: Any, params: list[Any]) -> list[Any]:
    """``params``, with their gradients unscaled first when a GradScaler scaled the loss (the
    clipping threshold applies to the true gradients)."""
    if scaler is not None:
        scaler.unscale_(opt)
    return params


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
            return _fine_tune_lean(model, tokenizer, spec, rows, cfg, out_dir, device)
        return _fine_tune_sft(model, tokenizer, spec, rows, cfg, out_dir, device)
    finally:
        tokenizer.padding_side = "left"


def _check_losses(spec: ModelSpec, losses: list[float]) -> None:
    if not losses or not all(math.isfinite(x) for x in losses):
        raise TrainingError(
            f"model {spec.name!r}: training diverged or logged no loss ({losses[-3:]}); "
            "lower [train] learning_rate or check the data"
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


def _fine_tune_sft(
    model: Any, tokenizer: Any, spec: ModelSpec, rows: list[dict[str, Any]], cfg: TrainConfig, out_dir: Path, device: str
) -> TrainStats:
    from datasets import Dataset
    from trl import SFTTrainer

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
        peft_model = trainer.model
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        total = real_param_count(peft_model)  # a 4-bit weight counts its real values, not its packed bytes
        with PeakMemory(device) as mem, Timer() as t:
            trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        _check_losses(spec, losses)
        tokens = int(trainer.state.num_input_tokens_seen)
        peft_model.save_pretrained(str(out_dir))
    return _stats(t.seconds, t.cpu, tokens, trainable, total, mem, losses, device,
                  counter.pad / counter.total if counter.total else 0.0, "sft", int(trainer.state.global_step), rows)


def _progress_callback(steps: int) -> Any:
    """A Trainer callback that reports each optimizer step (throttled) and the last logged loss."""
    from transformers import TrainerCallback

    tracker = progress.Tracker("train", steps, "step")

    class _Progress(TrainerCallback):  # type: ignore[misc]
        loss: float | None = None

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            tracker.update(state.global_step, **({"loss": self.loss} if self.loss is not None else {}))

    return _Progress()


def _stats(seconds: float, cpu: float, tokens: int, trainable: int, total: int, mem: PeakMemory, losses: list[float],
           device: str, pad_fraction: float, trainer: str, steps_run: int, rows: list[dict[str, Any]]) -> TrainStats:
    return TrainStats(
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


# ---- lean trainer ------------------------------------------------------------------------

Example = tuple[list[int], list[int]]  # (input ids, labels with -100 on the prompt)


def encode_rows(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> list[Example]:
    """Tokenize prompt/completion rows as trl does: EOS appended to the completion, the loss on
    the completion only (it starts where prompt and prompt+completion tokenizations diverge),
    truncated to ``max_length`` keeping the start."""
    out: list[Example] = []
    eos = tokenizer.eos_token
    for r in rows:
        if isinstance(r["prompt"], list):  # conversational: the chat template renders both
            prompt = tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True)
            full = tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=True)
            prompt, full = _ids(prompt), _ids(full)
        else:
            completion = r["completion"] if r["completion"].endswith(eos) else r["completion"] + eos
            prompt = tokenizer(r["prompt"])["input_ids"]
            full = tokenizer(r["prompt"] + completion)["input_ids"]
        n = 0
        while n < min(len(prompt), len(full)) and prompt[n] == full[n]:
            n += 1
        ids = full[:max_length]
        out.append((ids, ([-100] * n + full[n:])[:max_length]))
    return out


def _ids(enc: Any) -> list[int]:
    return list(enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc)


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Row indices of each step, in the order the Trainer (accelerate's seedable sampler) feeds
    them: epoch ``e`` is ``torch.randperm(n)`` drawn from a generator seeded with ``seed + e``,
    split into batches (the last one of an epoch may be short: ``drop_last=False``)."""
    import torch

    gen = torch.Generator()
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < steps:
        perm = torch.randperm(n, generator=gen.manual_seed(seed + epoch)).tolist()
        batches += [perm[i : i + batch_size] for i in range(0, n, batch_size)]
        epoch += 1
    return batches[:steps]


def collate(batch: list[Example], pad_id: int, packing: bool) -> dict[str, Any]:
    """Model inputs for one batch.

    Padded: rows right-padded to the longest, with an attention mask. Packed (padding-free): one
    row holding every example back to back, ``position_ids`` restarting at 0 per example and no
    attention mask, so attention stays inside each example; the first label of each example is
    ignored (it would be predicted from the previous example's last token).
    """
    import torch

    if packing:
        ids = torch.tensor([t for a, _ in batch for t in a]).unsqueeze(0)
        pos = torch.cat([torch.arange(len(a)) for a, _ in batch]).unsqueeze(0)
        labels = torch.tensor([t for _, b in batch for t in ([-100] + b[1:])]).unsqueeze(0)
        return {"input_ids": ids, "position_ids": pos, "labels": labels}
    width = max(len(a) for a, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for k, (a, b) in enumerate(batch):
        ids[k, : len(a)] = torch.tensor(a)
        labels[k, : len(b)] = torch.tensor(b)
        mask[k, : len(a)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _lr_lambda(warmup: int, steps: int) -> Any:
    def f(step: int) -> float:  # transformers' get_cosine_schedule_with_warmup
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, steps - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return f


def _optimizer(params: list[Any], cfg: TrainConfig) -> Any:
    import torch

    if cfg.optimizer in ("adamw_torch", "adamw_torch_fused"):
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    if cfg.optimizer in ("paged_adamw_8bit", "adamw_8bit", "adamw_bnb_8bit"):
        import bitsandbytes as bnb

        cls = bnb.optim.PagedAdamW8bit if cfg.optimizer.startswith("paged") else bnb.optim.AdamW8bit
        return cls(params, lr=cfg.learning_rate, weight_decay=0.0)
    raise TrainingError(f"[train] optimizer = {cfg.optimizer!r} is not supported by trainer = \"lean\"; "
                        "use adamw_torch, adamw_8bit or paged_adamw_8bit, or trainer = \"sft\"")


def _fine_tune_lean(
    model: Any, tokenizer: Any, spec: ModelSpec, rows: list[dict[str, Any]], cfg: TrainConfig, out_dir: Path, device: str
) -> TrainStats:
    import torch
    from peft import get_peft_model

    torch.manual_seed(cfg.seed)
    peft_model = get_peft_model(model, lora_config(spec, cfg))
    trainable_to_fp32(peft_model)  # fp32 weights and updates; autocast computes in bf16/fp16
    if cfg.quantization != "nf4":  # a 4-bit model is placed on its device when it loads
        peft_model.to(device)
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    total = real_param_count(peft_model)  # a 4-bit weight counts its real values, not its packed bytes
    examples = encode_rows(tokenizer, rows, cfg.max_length)
    opt = _optimizer(params, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(max(0, round(cfg.warmup_ratio * cfg.steps)), cfg.steps))
    amp, scaler = _amp(device, spec.family)
    every = max(1, cfg.steps // 10)
    losses: list[float] = []
    tokens = pad = fed = 0
    run_loss = torch.zeros((), device=device)
    steps_run = 0
    tracker = progress.Tracker("train", cfg.steps, "step")  # live progress only; no effect on training
    with PeakMemory(device) as mem, Timer() as t:
        for step, idx in enumerate(batch_order(len(examples), cfg.batch_size, cfg.steps, cfg.seed), start=1):
            batch = collate([examples[i] for i in idx], tokenizer.pad_token_id, cfg.packing)
            real = sum(len(examples[i][0]) for i in idx)
            tokens += real
            fed += batch["input_ids"].numel()
            pad += batch["input_ids"].numel() - real
            batch = {k: v.to(device) for k, v in batch.items()}
            if amp is not None:
                with amp:
                    loss = peft_model(**batch, use_cache=False).loss
            else:
                loss = peft_model(**batch, use_cache=False).loss
            logged = loss.detach()
            if scaler is not None:  # fp16: scale the loss so that small gradients do not flush to zero
                loss = scaler.scale(loss)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(_unscaled(scaler, opt, params), 1.0)
            if scaler is not None:
                scaler.step(opt)  # skips the step when a gradient overflowed
                scaler.update()
            else:
                opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            steps_run += 1
            run_loss += logged
            if step % every == 0 or step == cfg.steps:  # mean loss since the last log, like the Trainer's
                losses.append(float(run_loss) / (step - (len(losses) * every)))
                run_loss.zero_()
            # the loss shown: the last logged mean, or this step's before the first log
            if tracker.due(step):  # (float() of the loss would sync a GPU: only when shown)
                tracker.update(step, loss=losses[-1] if losses else float(logged))
    _check_losses(spec, losses)
    peft_model.save_pretrained(str(out_dir))
    return _stats(t.seconds, t.cpu, tokens, trainable, total, mem, losses, device, pad / fed if fed else 0.0, "lean",
                  steps_run, rows)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
