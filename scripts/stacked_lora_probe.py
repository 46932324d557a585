"""Probe of issue 27's "cheaper seeds" lever: K LoRA adapters (one per seed) trained side by side
over one frozen tiny base, against K single runs of the lean trainer, in one process.

Each step feeds the K seeds' own batches (each seed's batch order, as its single run) as one padded
batch; peft's mixed-adapter forward routes each row through its seed's adapter (the base layers
run once for all rows). The loss is the sum of the K per-seed means (each over its own answer
tokens), so each adapter gets exactly its own gradient; clipping at 1.0 and AdamW with the
recipe's warm-up + cosine schedule are per adapter. Reported: seconds of the K single runs
(``train.lean.fine_tune_lean``, the pipeline's trainer) vs the stacked loop, and how far each
stacked adapter and loss trace is from its single run.

    python scripts/stacked_lora_probe.py --model llama --dataset wikidoc --seeds 0,1,2

Nothing here is used by the pipeline: it measures whether the lever pays before it is built in.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model
from safetensors.torch import load_file

from medqa_core.cache import Cache
from medqa_core.data.split import load_split
from medqa_core.model.bases import load_base, load_tokenizer
from medqa_core.model.params import lora_config
from medqa_core.model.prompts import training_rows
from medqa_core.profile import load_profile
from medqa_core.resources import configure_threads
from medqa_core.stages import base as base_stage
from medqa_core.train.common import trainable_to_fp32
from medqa_core.train.lean import _lr_lambda, batch_order, collate, encode_rows, fine_tune_lean


def _rows(prof: Any, dataset: str, tok: Any) -> list[dict[str, Any]]:
    data = load_split(prof.datasets[dataset], prof.data_dir, prof.split)
    return training_rows(tok, [(e.question, e.answer) for e in data.train])


def stacked(source: str, spec: Any, tok: Any, rows: list[dict[str, Any]], cfg: Any, seeds: list[int]) -> tuple[float, dict[int, Any], dict[int, list[float]]]:
    model = load_base(source, spec, "none", "cpu")
    names = [f"s{s}" for s in seeds]
    peft_model = None
    for seed, name in zip(seeds, names, strict=True):
        torch.manual_seed(seed)  # each adapter initialised as its single run initialises it
        if peft_model is None:
            peft_model = get_peft_model(model, lora_config(spec, cfg), adapter_name=name)
        else:
            peft_model.add_adapter(name, lora_config(spec, cfg))
    assert peft_model is not None
    params = {n: [p for k, p in peft_model.named_parameters() if f".{n}." in k and "lora_" in k] for n in names}
    for ps in params.values():
        for p in ps:
            p.requires_grad_(True)
    trainable_to_fp32(peft_model)
    peft_model.eval()  # peft refuses mixed-adapter batches in training mode; dropout is 0 here, so eval = train
    assert cfg.lora_dropout == 0.0
    examples = encode_rows(tok, rows, cfg.max_length)
    opts = {n: torch.optim.AdamW(params[n], lr=cfg.learning_rate, weight_decay=0.0) for n in names}
    warm = max(0, round(cfg.warmup_ratio * cfg.steps))
    scheds = {n: torch.optim.lr_scheduler.LambdaLR(opts[n], _lr_lambda(warm, cfg.steps)) for n in names}
    orders = {n: batch_order(len(examples), cfg.batch_size, cfg.steps, s) for n, s in zip(names, seeds, strict=True)}
    losses: dict[int, list[float]] = {s: [] for s in seeds}
    start = time.perf_counter()
    for step in range(cfg.steps):
        batch_rows, owner = [], []
        for n in names:
            idx = orders[n][step]
            batch_rows += [examples[i] for i in idx]
            owner += [n] * len(idx)
        batch = collate(batch_rows, tok.pad_token_id, False)
        logits = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            adapter_names=owner, use_cache=False).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        per_token = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                      ignore_index=-100, reduction="none").view(labels.shape)
        total = torch.zeros(())
        row = 0
        for n, s in zip(names, seeds, strict=True):
            k = owner.count(n)
            mask = labels[row:row + k] != -100
            loss = per_token[row:row + k][mask].mean()
            losses[s].append(float(loss))
            total = total + loss
            row += k
        total.backward()
        for n in names:
            torch.nn.utils.clip_grad_norm_(params[n], 1.0)
            opts[n].step()
            scheds[n].step()
            opts[n].zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    weights = {s: {k.replace(f".{n}.", "."): p.detach().clone() for k, p in peft_model.named_parameters() if f".{n}." in k and "lora_" in k}
               for n, s in zip(names, seeds, strict=True)}
    return seconds, weights, losses


def one_seed(source: str, spec: Any, tok: Any, rows: list[dict[str, Any]], cfg: Any, seed: int,
             supervised_only: bool) -> tuple[float, dict[str, Any]]:
    """One seed in a plain loop of the lean recipe; the loss from logits at every position
    (transformers' own ``.loss``) or only at the supervised (answer) positions: the LM head and
    its backward skip the prompt."""
    model = load_base(source, spec, "none", "cpu")
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, lora_config(spec, cfg))
    trainable_to_fp32(peft_model)
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    examples = encode_rows(tok, rows, cfg.max_length)
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(max(0, round(cfg.warmup_ratio * cfg.steps)), cfg.steps))
    inner = peft_model.get_base_model()
    start = time.perf_counter()
    for idx in batch_order(len(examples), cfg.batch_size, cfg.steps, seed):
        batch = collate([examples[i] for i in idx], tok.pad_token_id, False)
        if supervised_only:
            hidden = inner.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 use_cache=False).last_hidden_state[:, :-1]
            labels = batch["labels"][:, 1:]
            keep = labels != -100
            logits = inner.lm_head(hidden[keep]).float()
            loss = torch.nn.functional.cross_entropy(logits, labels[keep])
        else:
            loss = peft_model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    return seconds, {k: p.detach().clone() for k, p in peft_model.named_parameters() if "lora_" in k}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--model", default="llama")
    ap.add_argument("--dataset", default="wikidoc")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=None, help="default: the profile's [train] steps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lever", choices=("stacked", "supervised"), default="stacked",
                    help="stacked: K seeds side by side vs K single runs; supervised: logits only at answer "
                         "positions vs at every position (same plain loop, alternated per seed)")
    args = ap.parse_args()
    configure_threads(args.threads)
    prof = load_profile(args.profile)
    spec = prof.models[args.model]
    cfg = prof.train if args.steps is None else dataclasses.replace(prof.train, steps=args.steps)
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        source = base_stage(prof, spec, Cache(Path(tmp) / "cache")).source
        tok = load_tokenizer(source)
        rows = _rows(prof, args.dataset, tok)
        if args.lever == "supervised":
            full = sup = 0.0
            for s in seeds:
                t_full, w_full = one_seed(source, spec, tok, rows, cfg, s, False)
                t_sup, w_sup = one_seed(source, spec, tok, rows, cfg, s, True)
                full, sup = full + t_full, sup + t_sup
                diff = max(float((w_sup[k] - w_full[k]).abs().max()) for k in w_full)
                print(f"  seed {s}: every position {t_full:.2f} s, answer positions {t_sup:.2f} s; max |diff| of adapter weights {diff:.2e}")
            print(f"{args.model}-{args.dataset}, {len(seeds)} seeds x {cfg.steps} steps: logits only at answer positions x{full / sup:.2f}")
            return
        single_s, single_w = 0.0, {}
        for s in seeds:
            out = Path(tmp) / f"single{s}"
            model = load_base(source, spec, "none", "cpu")
            t = time.perf_counter()
            fine_tune_lean(model, tok, spec, rows, dataclasses.replace(cfg, seed=s), out, "cpu")
            single_s += time.perf_counter() - t
            single_w[s] = load_file(str(out / "adapter_model.safetensors"))
        stack_s, stack_w, _ = stacked(source, spec, tok, rows, cfg, seeds)
    print(f"{args.model}-{args.dataset}, {len(seeds)} seeds x {cfg.steps} steps, batch {cfg.batch_size}, {args.threads} thread(s)")
    print(f"  single runs (fine_tune_lean, summed): {single_s:.2f} s; stacked: {stack_s:.2f} s; ratio x{single_s / stack_s:.2f}")
    for s in seeds:  # the stacked names, adapter name removed, are the saved adapter's names
        diffs = [float((stack_w[s][k].float() - v.float()).abs().max()) for k, v in single_w[s].items()]
        print(f"  seed {s}: max |stacked - single| over {len(diffs)} adapter tensors: {max(diffs):.2e}")


if __name__ == "__main__":
    main()
