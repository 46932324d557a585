"""The ``lean`` trainer: a plain PyTorch loop with the same recipe as ``sft`` (completion-only
loss, EOS appended, AdamW, linear warm-up + cosine decay, gradient clipping at 1.0, the
Trainer's seeded shuffling) and none of the Trainer's machinery. On the tiny CPU models the
Trainer's fixed per-step costs (trl's chunked log-prob LM head, callbacks, logging) were ~35% of
the step time.

``[train] packing = true`` trains padding-free: the rows of a batch are concatenated into one
sequence whose ``position_ids`` restart at 0 for each row, so attention stays within a row
(transformers builds the block-diagonal mask from the position ids; flash-attention kernels use
them as varlen boundaries) and no pad token is computed.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

from .. import progress
from ..errors import TrainingError
from ..model.bases import cpu_precision
from ..model.params import lora_config, real_param_count
from ..resources import PeakMemory, Timer
from ..specs import ModelSpec, TrainConfig
from . import applied
from .common import TrainStats, check_losses, make_stats, mixed_precision, trainable_to_fp32


def _amp(device: str, family: str | None, cfg: Any = None) -> tuple[Any, Any]:
    """(autocast context or None, GradScaler or None) of the lean loop on ``device``; on the CPU
    bf16 autocast only when ``[train] cpu_bf16`` asks and the CPU has it natively."""
    import torch

    if not device.startswith("cuda"):
        if cpu_precision(cfg) == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16), None
        return None, None
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


def canary_prompt_ids(tokenizer: Any) -> list[int]:
    """The prompt tokens a training row for the canary question starts with (the layout training
    sees; generation records the tokens it feeds for the same question)."""
    from ..model.prompts import CANARY_QUESTION, training_rows

    [(ids, labels)] = encode_rows(tokenizer, training_rows(tokenizer, [(CANARY_QUESTION, "x")]), 10_000)
    n = next((i for i, t in enumerate(labels) if t != -100), len(labels))
    return ids[:n]


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


def tail_steps(steps: int, fraction: float) -> int:
    """How many of the last steps ``[train] average_tail = fraction`` averages: fraction x steps
    rounded half up, at least 1; 0 when the option is off."""
    return max(1, math.floor(fraction * steps + 0.5)) if fraction > 0 else 0


class TailAverage:
    """The uniform running mean of ``params`` over the last :func:`tail_steps` optimizer steps:
    :meth:`update` after each step, :meth:`apply` copies the mean into the parameters once
    training ends. (On the tiny matrix it did not narrow the seed-to-seed spread:
    docs/performance.md, section 7.)"""

    def __init__(self, params: list[Any], steps: int, fraction: float) -> None:
        self.params = params
        self.first = steps - tail_steps(steps, fraction) + 1  # the first step averaged (1-based)
        self.mean: list[Any] | None = None
        self.count = 0

    def update(self, step: int) -> None:
        import torch

        if step < self.first:
            return
        with torch.no_grad():
            self.count += 1
            if self.mean is None:
                self.mean = [p.detach().float().clone() for p in self.params]
                return
            for m, p in zip(self.mean, self.params, strict=True):
                m.add_(p.detach().float() - m, alpha=1.0 / self.count)

    def apply(self) -> None:
        import torch

        if self.mean is None:
            return
        with torch.no_grad():
            for m, p in zip(self.mean, self.params, strict=True):
                p.copy_(m.to(p.dtype))


def keeps_answer_logits(model: Any) -> bool:
    """Whether ``model``'s causal-LM forward takes a boolean ``logits_to_keep`` mask: its forward
    has the argument and its module slices with transformers' ``slice_logits_to_keep`` (Llama,
    Mistral, Gemma 2, Phi-3 in transformers 5.25), and that function, tried on a 1 x 2 mask,
    keeps the masked position only (older versions take positions, not a mask). Then
    :func:`step_loss` can skip the prompt positions' logits."""
    import inspect
    import sys

    import torch

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    module = sys.modules.get(type(inner).__module__)
    try:
        takes = "logits_to_keep" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False
    slicer = getattr(module, "slice_logits_to_keep", None)
    if not takes or slicer is None:
        return False
    try:
        kept = slicer(torch.arange(2.0).view(1, 2, 1), torch.tensor([[False, True]]))
    except Exception:  # noqa: BLE001 - any failure means: no boolean masks here
        return False
    return tuple(kept.shape) == (1, 1) and float(kept[0, 0]) == 1.0


def step_loss(model: Any, batch: dict[str, Any], answers_only: bool) -> Any:
    """The batch's mean next-token loss over the supervised (answer) tokens.

    ``answers_only``: the LM head runs only at the positions whose next token is supervised (a
    boolean ``logits_to_keep``), and the cross-entropy is averaged over those tokens, as
    transformers' causal-LM loss averages over the tokens whose label is not -100. Each kept
    token's gradient, ``(softmax - onehot) / n``, is the one the full loss gives it and an ignored
    position's is zero in both, so the gradients are the same (to the last bit on the tiny CPU
    models, tested; a product over fewer rows may round differently elsewhere); the prompt
    positions' vocabulary projection, softmax and their backward are skipped (docs/performance.md,
    section 7). Otherwise the model's own ``.loss`` over every position."""
    import torch

    if not answers_only:
        return model(**batch, use_cache=False).loss
    labels = batch["labels"]
    supervised = labels[:, 1:] != -100  # position t predicts label t + 1
    keep = torch.nn.functional.pad(supervised, (0, 1), value=False)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits  # (kept tokens, vocabulary)
    return torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][supervised])


def _optimizer(params: list[Any], cfg: TrainConfig) -> Any:
    import torch

    if cfg.optimizer in ("adamw_torch", "adamw_torch_fused"):
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    if cfg.optimizer in ("paged_adamw_8bit", "adamw_8bit", "adamw_bnb_8bit"):
        import bitsandbytes as bnb

        optim: Any = bnb.optim  # its classes are not re-exported for type checkers
        cls = optim.PagedAdamW8bit if cfg.optimizer.startswith("paged") else optim.AdamW8bit
        return cls(params, lr=cfg.learning_rate, weight_decay=0.0)
    raise TrainingError(f"[train] optimizer = {cfg.optimizer!r} is not supported by trainer = \"lean\"; "
                        "use adamw_torch, adamw_8bit or paged_adamw_8bit, or trainer = \"sft\"")


def fine_tune_lean(
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
    amp, scaler = _amp(device, spec.family, cfg)
    answers_only = keeps_answer_logits(peft_model)
    tail = TailAverage(params, cfg.steps, cfg.average_tail) if cfg.average_tail > 0 else None
    every = max(1, cfg.steps // 10)
    losses: list[float] = []
    rates: list[float] = []  # the learning rate at each logged step, as the Trainer logs it
    recipe = applied.applied(peft_model, opt, [], examples, tokenizer, cfg.max_length,  # before any step
                             canary_prompt_ids(tokenizer))
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
            with amp if amp is not None else contextlib.nullcontext():
                loss = step_loss(peft_model, batch, answers_only)
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
            step_lr = applied.lr_of_step(opt)
            sched.step()
            opt.zero_grad(set_to_none=True)
            steps_run += 1
            if tail is not None:
                tail.update(step)
            run_loss += logged
            if step % every == 0 or step == cfg.steps:  # mean loss since the last log, like the Trainer's
                losses.append(float(run_loss) / (step - (len(losses) * every)))
                rates.append(step_lr)
                run_loss.zero_()
            # the loss shown: the last logged mean, or this step's before the first log
            if tracker.due(step):  # (float() of the loss would sync a GPU: only when shown)
                tracker.update(step, loss=losses[-1] if losses else float(logged))
    check_losses(spec, losses)
    if tail is not None:
        tail.apply()
    recipe["average_tail_steps"] = tail.count if tail is not None else 0
    peft_model.save_pretrained(str(out_dir))
    recipe["lr_at_log"] = applied.lr_trace(rates)
    recipe["autocast"] = str(amp.fast_dtype).removeprefix("torch.") if amp is not None else "none"
    return make_stats(t.seconds, t.cpu, tokens, trainable, total, mem, losses, device, pad / fed if fed else 0.0, "lean",
                  steps_run, rows, recipe)
