"""Prompt formatting shared by training and generation, so both see the same text.

A tokenizer with a chat template (the instruct models of the ``paper`` profile) gets the
question as one user turn and the generation prompt of its template; a tokenizer without
one (the tiny models) gets a plain ``Question:/Answer:`` layout. Training rows are
``{"prompt", "completion"}`` pairs, so trl computes the loss on the answer only.
"""
from __future__ import annotations

from typing import Any

PLAIN_TEMPLATE = "Question: {question}\nAnswer:"


def build_prompt(tokenizer: Any, question: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    return PLAIN_TEMPLATE.format(question=question)


def build_completion(tokenizer: Any, answer: str) -> str:
    # The plain layout puts a space after "Answer:"; chat templates start the turn themselves.
    return answer if getattr(tokenizer, "chat_template", None) else " " + answer


def training_rows(tokenizer: Any, pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"prompt": build_prompt(tokenizer, q), "completion": build_completion(tokenizer, a)} for q, a in pairs]
