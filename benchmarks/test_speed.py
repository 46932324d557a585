"""Speed benchmarks (pytest-benchmark), deselected by default: run with

    pytest benchmarks/test_speed.py -m perf -p no:xdist

Training throughput of our fine-tuning path (trl SFTTrainer, as configured in
``medqa_core.training``) vs a bare PyTorch LoRA loop on the same tiny base model, the same
rows, batch size, sequence cap and number of steps. Both record non-padding tokens/s in
``extra_info``; the ratio is printed and stored on the second benchmark.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import pytest

from medqa_core.datasets import load_split
from medqa_core.models import base_model_dir, load_base, load_tokenizer
from medqa_core.prompts import training_rows
from medqa_core.training import fine_tune, lora_config

pytestmark = pytest.mark.perf
MODEL, DATASET, STEPS = "llama", "wikidoc", 60
_RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def setup(medqa_profile, medqa_context):
    spec = medqa_profile.models[MODEL]
    src, _ = base_model_dir(medqa_profile, spec, medqa_context.cache)
    data = load_split(medqa_profile.datasets[DATASET], medqa_profile.data_dir, medqa_profile.split)
    cfg = dataclasses.replace(medqa_profile.train, steps=STEPS)
    return spec, src, data, cfg


def plain_lora_loop(model, tok, spec, rows, cfg) -> tuple[int, float]:
    """Bare PyTorch loop: completion-only labels, right padding to the batch's longest row."""
    import torch
    from peft import get_peft_model

    model = get_peft_model(model, lora_config(spec, cfg))
    model.train()
    seqs = []
    for r in rows:
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        c = tok(r["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = (p + c)[: cfg.max_length]
        seqs.append((ids, ([-100] * len(p) + c)[: cfg.max_length]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    tokens = 0
    t0 = time.perf_counter()
    for _ in range(cfg.steps):
        if len(order) < cfg.batch_size:
            order += torch.randperm(len(seqs), generator=gen).tolist()
        batch = [seqs[i] for i in order[: cfg.batch_size]]
        del order[: cfg.batch_size]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for k, (a, b) in enumerate(batch):
            ids[k, : len(a)], labels[k, : len(b)], mask[k, : len(a)] = torch.tensor(a), torch.tensor(b), 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
    return tokens, time.perf_counter() - t0


def test_train_throughput_ours(benchmark, setup, medqa_context):
    spec, src, data, cfg = setup
    tok = load_tokenizer(src)

    def run():
        with tempfile.TemporaryDirectory() as d:
            return fine_tune(load_base(src, spec), tok, spec, data.train, cfg, Path(d), medqa_context.device)

    stats = benchmark.pedantic(run, rounds=1, iterations=1)
    _RESULTS["ours"] = stats.tokens_per_s
    benchmark.extra_info.update(tokens_per_s=stats.tokens_per_s, steps=cfg.steps)
    assert stats.tokens_seen > 0


def test_train_throughput_plain_loop(benchmark, setup):
    spec, src, data, cfg = setup
    tok = load_tokenizer(src)
    tok.padding_side = "right"
    rows = training_rows(tok, [(e.question, e.answer) for e in data.train])
    tokens, secs = benchmark.pedantic(lambda: plain_lora_loop(load_base(src, spec), tok, spec, rows, cfg),
                                      rounds=1, iterations=1)
    tps = tokens / secs
    benchmark.extra_info.update(tokens_per_s=round(tps, 1), steps=cfg.steps)
    if "ours" in _RESULTS:
        ratio = _RESULTS["ours"] / tps
        benchmark.extra_info["ours_over_plain"] = round(ratio, 3)
        print(f"\ntraining tokens/s: ours {_RESULTS['ours']:.0f}, plain loop {tps:.0f}, ratio {ratio:.2f}")
    assert tokens > 0
