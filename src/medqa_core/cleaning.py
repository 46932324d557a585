"""Cleaning rules for the public medical QA dumps: boilerplate greetings and sign-offs.

Each rule rewrites one field (question or answer) and is named in a dataset's ``clean`` list
in the profile, e.g. ``clean = ["question_prefix", "question_greeting", "answer_greeting",
"answer_signoff"]``. The loader counts, per rule, how many rows it changed; rows left empty
by cleaning are then dropped as empty (and counted there). See README "Data cleaning".

- ``question_prefix``: a leading ``Q.`` / ``Q:`` / ``Question:`` (AI Medical Chatbot titles).
- ``question_greeting``: leading ``Hi doctor,``, ``Hello,``, ``Dear sir,`` ... (patient posts).
- ``answer_greeting``: leading ``Hi,``/``Hello,``/``Dear X,`` and boilerplate openers such as
  ``Thanks for your query.``, ``Welcome to Chat Doctor.``, ``I have gone through your query.``
  (HealthCareMagic, AI Medical Chatbot).
- ``answer_signoff``: trailing ``Regards, Dr. X``, ``Hope this helps.``, ``Take care.``,
  ``Wishing you good health.``, ``Let me know if I can assist you further.``, ``Thanks for
  using Chat Doctor.`` and ``For more information consult ... online --> <link>``.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_F = re.IGNORECASE


def _repeat(patterns: list[re.Pattern[str]], text: str) -> str:
    """Strip matches of any pattern until none matches (openers and sign-offs come in runs);
    a text that now starts mid-sentence ("Hi, your ...") gets its first letter capitalized."""
    original = text = text.strip()
    while True:
        before = text
        for p in patterns:
            text = p.sub("", text, count=1).strip()
        if text == before:
            break
    if text != original and text[:1].islower():
        text = text[0].upper() + text[1:]
    return text


_Q_PREFIX = [re.compile(r"^\s*(?:q|question)\s*[.:)]\s*", _F)]

_SALUTATION = r"(?:hi|hello|hey|hii+|greetings|good (?:morning|afternoon|evening)|dear|respected)"
_ADDRESSEE = r"(?:\s+(?:there|all|doctor|doc|sir|madam|ma'am|team|dr\.?\s*[a-z]+(?:\s+[a-z]+)?))*"

_Q_GREETING = [re.compile(rf"^\s*{_SALUTATION}{_ADDRESSEE}\s*[,.!:]+\s*", _F)]

_SENT = r"[^.!?\n]*[.!?]+"  # rest of one sentence, with its end punctuation
_A_GREETING = [
    re.compile(rf"^\s*{_SALUTATION}{_ADDRESSEE}\s*[,.!:]+\s*", _F),
    re.compile(r"^\s*(?:hi|hello|dear)\s+[a-z]+\s*[,!]\s*", _F),  # "Hi Mary," / "Dear John,"
    re.compile(rf"^\s*(?:thanks?|thank you)(?:\s+(?:a lot|so much|very much))?\s+for\b{_SENT}\s*", _F),
    re.compile(rf"^\s*(?:{_SALUTATION}\s*,?\s*)?(?:and\s+)?welcome\s+(?:to|back){_SENT}\s*", _F),
    re.compile(rf"^\s*i\s+(?:have\s+)?(?:gone|went|read|go)\s+(?:through\s+)?(?:your|the)\s+(?:query|question|post|history|message){_SENT}\s*", _F),
    re.compile(rf"^\s*i\s+(?:can\s+)?understand\s+your\s+concerns?{_SENT}\s*", _F),
]

_START = r"(?:^|(?<=[.!?\n]))\s*"  # a sign-off starts a sentence
_WISH = r"(?:take care(?: of yourself)?|best wishes|all the best|good luck|get well soon|stay (?:safe|healthy|well))"
_A_SIGNOFF = [
    re.compile(rf"{_START}(?:for\s+(?:more|further)\s+information\s+)?consult\s+an?\s+[^.!?\n]{{0,80}}online\s*-*>+\s*\S+\s*$", _F),
    re.compile(rf"{_START}(?:thanks?\s+and\s+|with\s+|best\s+|kind\s+|warm\s+)?regards\b[^\n]{{0,60}}$", _F),
    re.compile(rf"{_START}(?:dr|doctor)\.?\s+[a-z][a-z.]*(?:\s+[a-z][a-z.]*){{0,3}}\s*\.?\s*$", _F),
    re.compile(rf"{_START}hope\s+(?:this|that|it|i|my|the)\b[^.!?\n]{{0,120}}[.!]*\s*$", _F),
    re.compile(rf"{_START}(?:let me know|feel free|do not hesitate|don't hesitate)\b[^.!?\n]{{0,120}}[.!]*\s*$", _F),
    re.compile(rf"{_START}{_WISH}(?:\s*(?:,|and)\s*{_WISH})*\s*[.!]*\s*$", _F),
    re.compile(rf"{_START}wish(?:ing)?\s+you\b[^.!?\n]{{0,80}}[.!]*\s*$", _F),
    re.compile(rf"{_START}thanks?(?:\s+you)?(?:\s+for\s+(?:using|choosing|contacting|asking|writing)\b[^.!?\n]{{0,60}})?[.!]*\s*$", _F),
]


@dataclass(frozen=True)
class Rule:
    field: str  # "question" or "answer"
    apply: Callable[[str], str]
    doc: str


RULES: dict[str, Rule] = {
    "question_prefix": Rule("question", lambda t: _repeat(_Q_PREFIX, t), "leading 'Q.' / 'Question:'"),
    "question_greeting": Rule("question", lambda t: _repeat(_Q_GREETING, t), "leading 'Hi doctor,' / 'Hello,'"),
    "answer_greeting": Rule("answer", lambda t: _repeat(_A_GREETING, t), "leading greetings and 'thanks for your query'"),
    "answer_signoff": Rule("answer", lambda t: _repeat(_A_SIGNOFF, t), "trailing 'Regards Dr. X', 'Hope this helps'"),
}


def clean_row(
    question_parts: list[str], answer: str, rules: tuple[str, ...], counts: dict[str, int]
) -> tuple[list[str], str]:
    """Apply ``rules`` in order (question rules to each question column separately);
    ``counts[rule]`` += 1 for each rule that changed this row."""
    parts, answer = [p.strip() for p in question_parts], answer.strip()
    for name in rules:
        rule = RULES[name]
        if rule.field == "question":
            new_parts = [rule.apply(p) for p in parts]
            changed, parts = new_parts != parts, new_parts
        else:
            new = rule.apply(answer)
            changed, answer = new != answer, new
        if changed:
            counts[name] = counts.get(name, 0) + 1
    return parts, answer


__all__ = ["RULES", "Rule", "clean_row"]
