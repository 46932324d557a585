"""Prompt formatting shared by training and generation, so both see the same text.

A tokenizer with a chat template (the instruct models of the ``paper`` profile) gets the
question as one user turn and the generation prompt of its template; a tokenizer without
one (the tiny models) gets a plain ``Question:/Answer:`` layout. Training rows are
``{"prompt", "completion"}`` pairs, so trl computes the loss on the answer only.
"""
from __future__ import annotations

from typing import Any

PLAIN_TEMPLATE = "Question: {question}\nAnswer:"

#: the question whose prompt tokens stand for the layout (training vs generation, run vs baseline)
CANARY_QUESTION = "What is the usual treatment for a mild sprained ankle?"


def build_prompt(tokenizer: Any, question: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        text: str = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        return text
    return PLAIN_TEMPLATE.format(question=question)


def add_special_tokens(tokenizer: Any) -> bool:
    """Whether generation should let the tokenizer add its special tokens (BOS) to a prompt.

    trl tokenizes a plain-text prompt with the tokenizer's defaults (BOS added if the
    tokenizer adds one) and a conversational one through the chat template (whose text
    already holds BOS), so generation does the same.
    """
    return not getattr(tokenizer, "chat_template", None)


def training_rows(tokenizer: Any, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Prompt/completion rows for trl: conversational with a chat template, plain text otherwise."""
    if getattr(tokenizer, "chat_template", None):
        return [{"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}]}
                for q, a in pairs]
    # The plain layout puts a space after "Answer:".
    return [{"prompt": build_prompt(tokenizer, q), "completion": " " + a} for q, a in pairs]
