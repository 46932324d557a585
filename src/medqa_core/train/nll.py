"""The reference answers' likelihood under a model: per test pair, the mean negative
log-likelihood per token (nats) of the reference answer given its question, teacher-forced, on
the completion tokens only, with the pairs tokenized as training tokenizes them (:mod:`.lean`).

It is the loss the trainer minimises, measured on the test set. It needs no decoding, so it
moves smoothly with the adapter, where a greedy answer jumps between wordings (the gate's
``answer_nll`` measure; docs/own-data.md, "The reference answers' likelihood").
"""
from __future__ import annotations

import contextlib
from typing import Any

from .. import progress
from ..model.prompts import training_rows
from .lean import Example, collate, encode_rows

#: a pair whose prompt fills the token limit still has this many answer tokens scored (its prompt
#: loses its start instead), so every pair has a value
MIN_ANSWER_TOKENS = 16


def encode_pairs(tokenizer: Any, pairs: list[tuple[str, str]], max_length: int) -> list[Example]:
    """The pairs as training encodes them (:func:`.lean.encode_rows`: EOS appended, labels on the
    completion), cut to ``max_length`` tokens. A pair whose prompt leaves fewer than
    :data:`MIN_ANSWER_TOKENS` answer tokens in the limit keeps the last ``max_length - 16`` prompt
    tokens and the first 16 answer tokens: every pair is scored and no sequence exceeds the limit
    (widening such pairs instead made long-question data ~2x slower, docs/own-data.md)."""
    out: list[Example] = []
    for ids, labels in encode_rows(tokenizer, training_rows(tokenizer, pairs), 1_000_000):
        prompt_len = next((i for i, t in enumerate(labels) if t != -100), len(labels))
        end = max(max_length, prompt_len + MIN_ANSWER_TOKENS)
        start = max(0, end - max(max_length, MIN_ANSWER_TOKENS + 1))
        out.append((ids[start:end], labels[start:end]))
    return out


def reference_nll(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], max_length: int, bf16: bool,
                  device: str, batch_size: int = 8) -> list[float]:
    """Mean NLL per answer token of each pair (one float per pair, in order). ``bf16``: the
    forward pass under bf16 autocast on the CPU (the caller checks the CPU has it natively); the
    log-softmax is taken in float32 either way."""
    import torch

    examples = encode_pairs(tokenizer, pairs, max_length)
    # batches of similar length (less padding: x1.2 on counsel-chat); values return in pair order
    order = sorted(range(len(examples)), key=lambda k: len(examples[k][0]))
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 and device == "cpu" else contextlib.nullcontext()
    tracker = progress.Tracker("answer nll", len(examples), "pair")
    tracker.update(0)
    out: dict[int, float] = {}
    with torch.inference_mode(), amp:
        for i in range(0, len(examples), batch_size):
            rows = order[i : i + batch_size]
            batch = collate([examples[k] for k in rows], pad, False)
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            labels = batch["labels"][:, 1:]
            for row, k in enumerate(rows):
                keep = labels[row] != -100
                lp = torch.log_softmax(logits[row][keep].float(), dim=-1)
                nll = -lp.gather(1, labels[row][keep].unsqueeze(1)).mean()
                out[k] = round(float(nll), 6)
            tracker.update(len(out))
    return [out[k] for k in range(len(examples))]
