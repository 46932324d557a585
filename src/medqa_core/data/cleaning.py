"""Cleaning rules for the public medical QA dumps: boilerplate greetings and sign-offs.

Each rule rewrites one field (question or answer) and is named in a dataset's ``clean`` list
in the profile, e.g. ``clean = ["question_prefix", "question_greeting", "answer_greeting",
"answer_signoff"]``. The loader counts, per rule, how many rows it changed; rows left empty
by cleaning are then dropped as empty (and counted there). See docs/data.md, "Data: files, cleaning, split, leakage".

:data:`SPEC` below is what the rules clean: for each rule, the field it rewrites and its plain
regular expressions in order, each with a line saying what it strips. A rule strips the text,
then applies its patterns in order, each with ``re.sub(count=1)`` (and strips again), until a
whole pass changes nothing (openers and sign-offs come in runs); a text that then differs and
starts in lower case gets its first letter capitalized. :func:`apply_spec` is exactly that.

``SPEC`` is the specification, not what runs on the data: those regexes take quadratic time on
a sign-off after thousands of newlines, and the greeting's addressee run ``(?:\\s+(?:doctor|dr
...))*`` exponential time on ``hi dr doctor dr doctor ...``. :data:`RULES` apply the rules with
a linear-time engine (the private ``_cleaning_engine``), which tests/unit/test_cleaning.py checks
against ``SPEC`` through :func:`apply_spec` (fixed edge cases and property tests).

:func:`normalise_question` is the one comparison form of a question: the loader drops a row
whose normalised question equals an earlier row's (dedup), and the leak check
(``leakage.py``) calls a test question an exact leak when its normalised form is a train
question's. Both use this one function, so a punctuation or spacing variant that survived dedup
can never show up as an "exact" leak.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from ._cleaning_engine import ENGINE


@dataclass(frozen=True)
class Pattern:
    """One plain pattern of a rule: a regular expression, matched case-insensitively, and a
    line saying what it strips, with examples in single quotes (each of which the pattern strips
    whole; tests/unit/test_cleaning.py checks that)."""

    regex: str
    strips: str


@dataclass(frozen=True)
class RuleSpec:
    """A rule's definition: the field it rewrites, a short description (shown when a profile
    names an unknown rule) and its patterns, applied in this order."""

    field: str  # "question" or "answer"
    doc: str
    patterns: tuple[Pattern, ...]


# Pieces shared by several patterns.
#   A salutation, then any run of addressees (each after whitespace), as in "Hi dr. Ann Lee doctor".
_SALUTATION = r"(?:hi|hello|hey|hii+|greetings|good (?:morning|afternoon|evening)|dear|respected)"
_ADDRESSEES = r"(?:\s+(?:there|all|doctor|doc|sir|madam|ma'am|team|dr\.?\s*[a-z]+(?:\s+[a-z]+)?))*"
#   The rest of one sentence, with its end punctuation.
_REST_OF_SENTENCE = r"[^.!?\n]*[.!?]+"
#   A sign-off starts a sentence: at the text's start or after ".", "!", "?" or a newline.
_SENTENCE_START = r"(?:^|(?<=[.!?\n]))\s*"
_WISH = r"(?:take care(?: of yourself)?|best wishes|all the best|good luck|get well soon|stay (?:safe|healthy|well))"

SPEC: dict[str, RuleSpec] = {
    "question_prefix": RuleSpec(
        "question",
        "leading 'Q.' / 'Question:'",
        (
            Pattern(
                r"^\s*(?:q|question)\s*[.:)]\s*",
                "a leading 'Q.', 'Q:', 'Q)' or 'Question:' (AI Medical Chatbot titles)",
            ),
        ),
    ),
    "question_greeting": RuleSpec(
        "question",
        "leading 'Hi doctor,' / 'Hello,'",
        (
            Pattern(
                rf"^\s*{_SALUTATION}{_ADDRESSEES}\s*[,.!:]+\s*",
                "a leading greeting to the doctor: 'Hi doctor,', 'Hello,', 'Dear sir,', 'Good morning Dr. Lee:'",
            ),
        ),
    ),
    "answer_greeting": RuleSpec(
        "answer",
        "leading greetings and 'thanks for your query'",
        (
            Pattern(
                rf"^\s*{_SALUTATION}{_ADDRESSEES}\s*[,.!:]+\s*",
                "a leading greeting: 'Hi,', 'Hello there!', 'Dear sir,'",
            ),
            Pattern(
                r"^\s*(?:hi|hello|dear)\s+[a-z]+\s*[,!]\s*",
                "a leading greeting with a name: 'Hi Mary,', 'Dear John!'",
            ),
            Pattern(
                rf"^\s*(?:thanks?|thank you)(?:\s+(?:a lot|so much|very much))?\s+for\b{_REST_OF_SENTENCE}\s*",
                "a leading thank-you sentence: 'Thanks for your query.', 'Thank you so much for asking.'",
            ),
            Pattern(
                rf"^\s*(?:{_SALUTATION}\s*,?\s*)?(?:and\s+)?welcome\s+(?:to|back){_REST_OF_SENTENCE}\s*",
                "a leading welcome sentence: 'Welcome to Chat Doctor.', 'Hello and welcome back.'",
            ),
            Pattern(
                rf"^\s*i\s+(?:have\s+)?(?:gone|went|read|go)\s+(?:through\s+)?(?:your|the)\s+"
                rf"(?:query|question|post|history|message){_REST_OF_SENTENCE}\s*",
                "a leading 'I have gone through your query.' / 'I read the history.' sentence",
            ),
            Pattern(
                rf"^\s*i\s+(?:can\s+)?understand\s+your\s+concerns?{_REST_OF_SENTENCE}\s*",
                "a leading 'I understand your concern.' / 'I can understand your concerns ...' sentence",
            ),
        ),
    ),
    # Each sign-off runs to the end of the text and starts a sentence.
    "answer_signoff": RuleSpec(
        "answer",
        "trailing 'Regards Dr. X', 'Hope this helps'",
        (
            Pattern(
                rf"{_SENTENCE_START}(?:for\s+(?:more|further)\s+information\s+)?consult\s+an?\s+[^.!?\n]{{0,80}}"
                r"online\s*-*>+\s*\S+\s*$",
                "a trailing 'For more information consult a neurologist online --> <link>'",
            ),
            Pattern(
                rf"{_SENTENCE_START}(?:thanks?\s+and\s+|with\s+|best\s+|kind\s+|warm\s+)?regards\b[^\n]{{0,60}}$",
                "a trailing 'Regards', 'Thanks and regards, Dr. X' (up to 60 more characters on its line)",
            ),
            Pattern(
                rf"{_SENTENCE_START}(?:dr|doctor)\.?\s+[a-z][a-z.]*(?:\s+[a-z][a-z.]*){{0,3}}\s*\.?\s*$",
                "a trailing signature: 'Dr. Ray', 'Dr. John A. Smith' (the title and one to four words)",
            ),
            Pattern(
                rf"{_SENTENCE_START}hope\s+(?:this|that|it|i|my|the)\b[^.!?\n]{{0,120}}[.!]*\s*$",
                "a trailing 'Hope this helps.' / 'Hope I have answered your query.' sentence",
            ),
            Pattern(
                rf"{_SENTENCE_START}(?:let me know|feel free|do not hesitate|don't hesitate)\b[^.!?\n]{{0,120}}"
                r"[.!]*\s*$",
                "a trailing 'Let me know if I can assist you further.' / 'Feel free to ask.' sentence",
            ),
            Pattern(
                rf"{_SENTENCE_START}{_WISH}(?:\s*(?:,|and)\s*{_WISH})*\s*[.!]*\s*$",
                "trailing wishes: 'Take care.', 'Take care of yourself, good luck and get well soon!'",
            ),
            Pattern(
                rf"{_SENTENCE_START}wish(?:ing)?\s+you\b[^.!?\n]{{0,80}}[.!]*\s*$",
                "a trailing 'Wishing you good health.' / 'Wish you well.' sentence",
            ),
            Pattern(
                rf"{_SENTENCE_START}thanks?(?:\s+you)?(?:\s+for\s+(?:using|choosing|contacting|asking|writing)\b"
                r"[^.!?\n]{0,60})?[.!]*\s*$",
                "a trailing 'Thanks.', 'Thank you!' or 'Thanks for using Chat Doctor.'",
            ),
        ),
    ),
}


def apply_spec(rule: str, text: str) -> str:
    """Rule ``rule`` applied to ``text`` as :data:`SPEC` defines it, with the plain regexes.

    The reference the tests check the engine against; too slow for the data (see the module
    docstring): use ``RULES[rule].apply``, which gives the same result."""
    patterns = [re.compile(p.regex, re.IGNORECASE) for p in SPEC[rule].patterns]
    original = text = text.strip()
    while True:
        before = text
        for rx in patterns:
            text = rx.sub("", text, count=1).strip()
        if text == before:
            break
    if text != original and text[:1].islower():
        text = text[0].upper() + text[1:]
    return text


@dataclass(frozen=True)
class Rule:
    """A rule as the loader runs it: the field it rewrites, the function that rewrites one text
    (the engine's), and the rule's short description."""

    field: str  # "question" or "answer"
    apply: Callable[[str], str]
    doc: str


#: the rules as the loader applies them: ``SPEC``'s fields and descriptions, the engine's functions
RULES: dict[str, Rule] = {name: Rule(spec.field, ENGINE[name], spec.doc) for name, spec in SPEC.items()}


def clean_row(question_parts: list[str], answer: str, rules: tuple[str, ...], counts: dict[str, int]) -> tuple[list[str], str]:
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


_NON_WORD = re.compile(r"[\W_]+")
_SPACES = re.compile(r"\s+")


def normalise_question(text: str) -> str:
    """The comparison form of a question, shared by dedup and the leak check.

    Unicode NFKC (full-width letters, ligatures and the like become their plain forms), case
    folded (``ß`` -> ``ss``), then every run of characters that are neither letters nor digits
    (punctuation, symbols, ``_``, whitespace) becomes one space, trimmed at both ends:
    ``"What is  FLU ?"``, ``"what is flu"`` and ``"What is flu?!"`` are all ``"what is flu"``.

    A text with no letter or digit at all (``"???"``) keeps its case-folded, whitespace-collapsed
    form instead of becoming empty, so two different symbol-only questions stay different.
    """
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())  # idempotent
    words = _NON_WORD.sub(" ", folded).strip()
    return words if words else _SPACES.sub(" ", folded).strip()


__all__ = ["RULES", "SPEC", "Pattern", "Rule", "RuleSpec", "apply_spec", "clean_row", "normalise_question"]
