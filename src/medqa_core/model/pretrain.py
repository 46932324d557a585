"""Tiny same-architecture base models: built from their family's transformers config (GQA,
sliding window, soft-capping and fused qkv kept), then given a short full-parameter pretraining
on the project's generic corpus so that LoRA has language to adapt. ``fixtures/make_tiny_bases.py``
runs this once and ships the result; a profile without a ``checkpoint`` runs it as a cached
stage (``stages.base``)."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from ..errors import ConfigError, TrainingError
from ..specs import ModelSpec, PretrainConfig

log = logging.getLogger(__name__)


def build_tiny(spec: ModelSpec, tokenizer: Any, seed: int) -> Any:
    """Randomly initialised tiny model of ``spec.family`` (deterministic for a seed)."""
    import torch
    import transformers

    from ..specs import FAMILIES

    assert spec.tiny_config is not None
    cls = getattr(transformers, FAMILIES[spec.family]["config"])
    ids = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    try:
        config = cls(**{**spec.tiny_config, **ids})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {spec.name!r}: tiny_config rejected by {cls.__name__}: {exc}") from exc
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(
        config, attn_implementation=spec.attn_implementation, dtype=torch.float32
    )


def _corpus_blocks(tokenizer: Any, corpus: Path, block: int) -> Any:
    import torch

    lines = [ln.strip() for ln in corpus.read_text(encoding="utf-8").splitlines() if ln.strip()]
    ids: list[int] = []
    for enc in tokenizer(lines, add_special_tokens=False)["input_ids"]:
        ids.extend(enc + [tokenizer.eos_token_id])
    n = len(ids) // block
    return torch.tensor(ids[: n * block], dtype=torch.long).view(n, block)


def pretrain(model: Any, tokenizer: Any, corpus: Path, cfg: PretrainConfig) -> dict[str, float]:
    """Short full-parameter causal-LM training on the corpus; a plain loop with no unit test of
    its own (tests/slow/test_cache_corruption.py runs it end to end)."""
    import torch

    blocks = _corpus_blocks(tokenizer, corpus, cfg.block_size)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.01)
    warm = max(1, cfg.steps // 20)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, cfg.steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    first = last = float("nan")
    for step in range(cfg.steps):
        idx = torch.randint(0, blocks.shape[0], (cfg.batch_size,), generator=gen)
        batch = blocks[idx]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step == 0:
            first = loss.item()
        if step % 100 == 0 or step == cfg.steps - 1:
            last = loss.item()
            log.info("pretrain step %d/%d loss %.3f", step + 1, cfg.steps, last)
    model.eval()
    if not (math.isfinite(first) and math.isfinite(last)):
        raise TrainingError(f"tiny pretraining diverged (loss {last}); lower [pretrain] learning_rate")
    return {"loss_first": first, "loss_last": last, "blocks": int(blocks.shape[0])}
