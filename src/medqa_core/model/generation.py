"""Batched, left-padded, greedy (deterministic) answer generation."""
from __future__ import annotations

import logging
from typing import Any

from .. import progress
from ..specs import GenerationConfig
from .prompts import add_special_tokens, build_prompt

log = logging.getLogger(__name__)


def clean_answer(text: str) -> str:
    """Drop byte-level decoding debris (U+FFFD) and surrounding whitespace."""
    return text.replace("\ufffd", "").strip()


#: End-of-turn tokens of common chat templates (Gemma, Llama 3, Phi-3, ChatML): with a chat
#: template trl trains the model to end its answer with the template's end-of-turn token, not EOS.
END_OF_TURN = ("<end_of_turn>", "<|eot_id|>", "<|end|>", "<|im_end|>")


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end an answer: the tokenizer's EOS, the model's configured
    ``generation_config.eos_token_id`` (one id or several), and the end-of-turn token of the
    tokenizer's chat template when the template uses one and the vocabulary has it. EOS first."""
    ids: list[int] = []

    def add(x: Any) -> None:
        if x is None:
            return
        for i in ([x] if isinstance(x, int) else list(x)):
            if int(i) not in ids:
                ids.append(int(i))

    add(tokenizer.eos_token_id)
    add(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    template = getattr(tokenizer, "chat_template", None)
    if template:
        text = template if isinstance(template, str) else " ".join(map(str, dict(template).values()))
        vocab = tokenizer.get_vocab()
        for tok in END_OF_TURN:
            if tok in text and tok in vocab:
                add(vocab[tok])
    return ids


def generation_prompt_ids(tokenizer: Any, question: str) -> list[int]:
    """The prompt tokens :func:`generate_answers` feeds the model for ``question``."""
    return list(tokenizer(build_prompt(tokenizer, question), add_special_tokens=add_special_tokens(tokenizer))["input_ids"])


def generate_answers(
    model: Any, tokenizer: Any, questions: list[str], cfg: GenerationConfig, device: str = "cpu",
    settings: dict[str, Any] | None = None, progress_stage: str = "generate",
) -> list[str]:
    """Greedy answers for ``questions``, in input order.

    Prompts are sorted by token length before batching so each batch pads little, then the
    answers are put back in the caller's order. ``settings``, when given, receives the
    generation arguments actually passed to ``generate`` (an exact invariant of the gate).
    Each finished batch is reported to :mod:`progress` as stage ``progress_stage``.
    ``cfg.cpu_bf16`` on the CPU decodes under bf16 autocast (native bf16 only; refused elsewhere);
    the settings then carry ``autocast``, so such answers never pass for fp32 ones.
    """
    import contextlib

    import torch

    from .bases import cpu_precision

    bf16 = device == "cpu" and cpu_precision(cfg, "generation") == "bf16"

    tokenizer.padding_side = "left"
    prompts = [build_prompt(tokenizer, q) for q in questions]
    special = add_special_tokens(tokenizer)
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=special)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
    answers: list[str] = [""] * len(prompts)
    model.eval()
    stops = stop_token_ids(model, tokenizer)
    # one stop id is passed as the int it always was (the generation settings are a gate invariant)
    eos: int | list[int] | None = stops[0] if len(stops) == 1 else (stops or None)
    tracker = progress.Tracker(progress_stage, len(order), "question")
    batches = -(-len(order) // cfg.batch_size)
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=special).to(device)
        kwargs = {"max_new_tokens": cfg.max_new_tokens, "do_sample": False, "repetition_penalty": cfg.repetition_penalty,
                  "pad_token_id": tokenizer.pad_token_id, "eos_token_id": eos}
        if settings is not None:
            settings.update(kwargs, **({"autocast": "bfloat16"} if bf16 else {}))
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), amp:
            out = model.generate(**enc, **kwargs, use_cache=True)
        new = out[:, enc["input_ids"].shape[1] :]
        for i, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True)):
            answers[i] = clean_answer(text)
        done = min(start + cfg.batch_size, len(order))
        log.debug("generated %d/%d", done, len(order))
        tracker.update(done, batch=f"{start // cfg.batch_size + 1}/{batches}")
    return answers
