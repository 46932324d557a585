"""The cleaning rules' engine: what runs on the data. Private; the rules are defined by
:data:`cleaning.SPEC`, and tests/unit/test_cleaning.py checks this engine against it.

:data:`ENGINE` maps each rule name of ``cleaning.SPEC`` to a function of one text. Each
function gives what :func:`cleaning.apply_spec` gives (the rule's plain regular expressions,
applied with ``re.sub(count=1)`` until nothing changes, then the capitalization), but in time
linear in the text length, whatever the text (a scraped answer can hold thousands of newlines
or repeated sign-offs). Those regexes are quadratic on such texts, and the greeting's
exponential, so the engine never runs them whole and never searches the whole text per step:

- Openers are matched only at the current start (``pattern.match(text, pos)``), and the
  greeting with its run of addressees (``Hi dr. Ann Lee doctor,``) is matched by a memoized
  walk over the addressee words, which finds the same match as the regex's backtracking does
  (that regex took exponential time on ``hi dr doctor dr doctor ...``).
- A sign-off must run to the end of the text and start a sentence (at the start, or after
  ``.``/``!``/``?``, or after whitespace holding a newline). Each sign-off pattern is found by
  scanning leftwards from the end over the few words it can span, and a found match is checked
  with the full pattern before it is cut. Runs of one character class (a token, a whitespace run,
  ``!!!``) are measured once per text and remembered, so cutting a long run of sign-offs one
  at a time stays linear.

The matchers of each rule are tried in the order of that rule's patterns in ``SPEC``.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Sequence

_F = re.IGNORECASE

_Matcher = Callable[[str, int], "int | None"]  # (text, pos) -> end of a match starting at pos, or None
_WS_RUN = re.compile(r"\s*+")


def _regex(pattern: str) -> _Matcher:
    rx = re.compile(pattern, _F)

    def match(text: str, pos: int) -> int | None:
        m = rx.match(text, pos)
        return m.end() if m else None

    return match


def _capitalize(text: str, original: str) -> str:
    if text != original and text[:1].islower():
        text = text[0].upper() + text[1:]
    return text


def _strip_leading(matchers: Sequence[_Matcher], text: str) -> str:
    """Strip leading matches of any matcher until none matches; a text that now starts
    mid-sentence ("Hi, your ...") gets its first letter capitalized."""
    original = text = text.strip()
    pos, n = 0, len(text)
    while pos < n:
        before = pos
        for match in matchers:
            end = match(text, pos)
            if end is not None:
                pos = _WS_RUN.match(text, end).end()  # type: ignore[union-attr]
        if pos == before:
            break
    return _capitalize(text[pos:], original)


# ---------------------------------------------------------------- openers

_Q_PREFIX = [_regex(r"(?:q|question)\s*[.:)]\s*")]

_SALUTATION = r"(?:hi|hello|hey|hii+|greetings|good (?:morning|afternoon|evening)|dear|respected)"
# The salutation's alternatives in the regex's order; ``hii+`` only ever works at its longest.
_SAL_ALTS = [
    re.compile(p, _F)
    for p in ("hi", "hello", "hey", "hii+", "greetings", "good (?:morning|afternoon|evening)", "dear", "respected")
]
# An addressee after the salutation, each after whitespace, in the regex's order:
#   there|all|doctor|doc|sir|madam|ma'am|team|dr\.?\s*[a-z]+(?:\s+[a-z]+)?
_ADDR_WORDS = [re.compile(w, _F) for w in ("there", "all", "doctor", "doc", "sir", "madam", "ma'am", "team")]
_ADDR_DR = re.compile(r"dr\.?\s*+[a-z]++", _F)
_ADDR_NAME2 = re.compile(r"\s++[a-z]++", _F)
_ADDR_PUNCT = re.compile(r"[,.!:]++\s*+")


def _addressee_steps(text: str, j: int) -> list[int]:
    """Ends of one more addressee from ``j``, in the order the regex tries them. Every
    whitespace run and word is taken whole: a shorter take leaves whitespace or a letter
    where the next step needs a letter or whitespace/punctuation, so it cannot succeed."""
    w = _WS_RUN.match(text, j).end()  # type: ignore[union-attr]
    if w == j:
        return []
    ends = [m.end() for rx in _ADDR_WORDS if (m := rx.match(text, w))]
    m = _ADDR_DR.match(text, w)
    if m:
        name2 = _ADDR_NAME2.match(text, m.end())
        if name2:
            ends.append(name2.end())
        ends.append(m.end())
    return ends


def _addressee_tail(text: str, j: int) -> int | None:
    w = _WS_RUN.match(text, j).end()  # type: ignore[union-attr]
    m = _ADDR_PUNCT.match(text, w)
    return m.end() if m else None


def _addressees(text: str, j0: int, memo: dict[int, int | None]) -> int | None:
    """End of ``(?:\\s+ADDRESSEE)*\\s*[,.!:]+\\s*`` from ``j0`` as the regex's greedy
    backtracking finds it, with each position's result computed once (the regex itself
    re-explores the same positions exponentially often)."""
    if j0 in memo:
        return memo[j0]
    steps: dict[int, list[int]] = {}
    todo = [j0]
    while todo:
        j = todo.pop()
        if j in steps or j in memo:
            continue
        steps[j] = _addressee_steps(text, j)
        todo.extend(steps[j])
    for j in sorted(steps, reverse=True):  # every step moves right: later positions first
        result = next((memo[k] for k in steps[j] if memo[k] is not None), None)
        memo[j] = result if result is not None else _addressee_tail(text, j)
    return memo[j0]


def _greeting(text: str, pos: int) -> int | None:
    """``SALUTATION ADDRESSEE* [,.!:]+`` at ``pos`` ("Hi doctor,", "Dear Dr. Ann Lee:")."""
    memo: dict[int, int | None] = {}
    for sal in _SAL_ALTS:
        m = sal.match(text, pos)
        if m:
            end = _addressees(text, m.end(), memo)
            if end is not None:
                return end
    return None


_Q_GREETING = [_greeting]

_SENT = r"[^.!?\n]*+[.!?]++"  # rest of one sentence, with its end punctuation
_A_GREETING = [
    _greeting,
    _regex(r"(?:hi|hello|dear)\s+[a-z]+\s*[,!]\s*"),  # "Hi Mary," / "Dear John,"
    _regex(rf"(?:thanks?|thank you)(?:\s++(?:a lot|so much|very much))?\s++for\b{_SENT}\s*"),
    _regex(rf"(?:{_SALUTATION}\s*+,?\s*+)?(?:and\s++)?welcome\s++(?:to|back){_SENT}\s*"),
    _regex(
        rf"i\s++(?:have\s++)?(?:gone|went|read|go)\s++(?:through\s++)?(?:your|the)\s++(?:query|question|post|history|message){_SENT}\s*"
    ),
    _regex(rf"i\s++(?:can\s++)?understand\s++your\s++concerns?{_SENT}\s*"),
]


# ---------------------------------------------------------------- sign-offs
#
# A sign-off pattern is ``START BODY`` with START = ``(?:^|(?<=[.!?\n]))\s*`` and BODY running to
# the end of the (stripped) text; ``re.sub(count=1)`` removes the leftmost match. Every BODY
# starts with a letter, so a match's body starts at the first non-space after its START, and
# the leftmost match is the one whose body starts leftmost. The text is then cut at the
# whitespace before that body. The finders below return the leftmost body start for the
# current end ``e`` (the text is always a prefix ``text[:e]`` of the stripped input).

_WISH = r"(?:take care(?: of yourself)?|best wishes|all the best|good luck|get well soon|stay (?:safe|healthy|well))"
_BODY = {  # the BODY of each SPEC pattern (full-match at the body start; the text's end is the end)
    "regards": r"(?:thanks?\s+and\s+|with\s+|best\s+|kind\s+|warm\s+)?regards\b[^\n]{0,60}",
    "dr": r"(?:dr|doctor)\.?\s+[a-z][a-z.]*(?:\s+[a-z][a-z.]*){0,3}\s*\.?\s*",
    "hope": r"hope\s+(?:this|that|it|i|my|the)\b[^.!?\n]{0,120}[.!]*\s*",
    "let_me_know": r"(?:let me know|feel free|do not hesitate|don't hesitate)\b[^.!?\n]{0,120}[.!]*\s*",
    "wish_list": rf"{_WISH}(?:\s*(?:,|and)\s*{_WISH})*\s*[.!]*\s*",
    "wish_you": r"wish(?:ing)?\s+you\b[^.!?\n]{0,80}[.!]*\s*",
    "thanks": r"thanks?(?:\s+you)?(?:\s+for\s+(?:using|choosing|contacting|asking|writing)\b[^.!?\n]{0,60})?[.!]*\s*",
    # in SPEC: (?:for\s+(?:more|further)\s+information\s+)?consult\s+an?\s+[^.!?\n]{0,80}online\s*-*>+\s*\S+\s*
    # here with each whitespace run taken whole and ">+\s*\S+" split into its two cases, so no
    # run is re-split on failure (the same strings match).
    "consult": r"(?:for\s++(?:more|further)\s++information\s++)?consult\s++an?\s++[^.!?\n]{0,80}online\s*+-*+>(?:>*+\s++\S++|\S++)",
}
_FULL = {name: re.compile(body, _F) for name, body in _BODY.items()}

# character classes whose runs are measured leftwards (on the reversed text)
_C_WS = re.compile(r"\s*+")
_C_TOKEN = re.compile(r"\S*+")
_C_WORD = re.compile(r"[a-z.]*+", _F)
_C_BANG = re.compile(r"[.!]*+")
_C_PLAIN = re.compile(r"[^.!?\n]*+")
_C_GT = re.compile(r">*+")
_C_DASH = re.compile(r"-*+")
_CLASSES = (_C_WS, _C_TOKEN, _C_WORD, _C_BANG, _C_PLAIN, _C_GT, _C_DASH)


class _Text:
    """The stripped text, its reverse and what is known about it: cached run starts and
    per-position facts (every fact looks only left of its position, so it holds for every
    prefix the rule cuts the text down to)."""

    def __init__(self, text: str) -> None:
        self.text, self.rev, self.n = text, text[::-1], len(text)
        self._spans: dict[re.Pattern[str], tuple[list[int], list[int]]] = {c: ([], []) for c in _CLASSES}
        self.memo: dict[tuple[str, int], object] = {}

    def run(self, cls: re.Pattern[str], j: int) -> int:
        """Start of the maximal run of class ``cls`` that ends at ``j``. Runs found so far are
        kept as spans (start, known end), so each character is scanned once per class. Spans are
        kept by descending start: the text is cut from the right, so new spans go at the end."""
        negstarts, ends = self._spans[cls]
        k = bisect_left(negstarts, -j)  # the span with the largest start <= j
        if k < len(negstarts) and j <= ends[k]:
            return -negstarts[k]
        low = ends[k] if k < len(negstarts) else 0
        m = cls.match(self.rev, self.n - j, self.n - low)
        i = j - (m.end() - m.start())  # type: ignore[union-attr]
        if k < len(negstarts) and i == low:  # reached a known span: same run
            ends[k] = j
            return -negstarts[k]
        negstarts.insert(k, -i)
        ends.insert(k, j)
        return i

    def ws(self, j: int) -> int:
        """Start of the whitespace before ``j`` (``j`` itself when there is none)."""
        return self.run(_C_WS, j)

    def sentence_start(self, b: int) -> bool:
        """START can match before a body at ``b``: the whitespace before ``b`` follows the text's
        start or ``.``/``!``/``?``, or holds a newline."""
        key = ("start", b)
        if key not in self.memo:
            p = self.ws(b)
            self.memo[key] = p == 0 or self.text[p - 1] in ".!?" or self.text.find("\n", p, b) >= 0
        return self.memo[key]  # type: ignore[return-value]

    def ends_with(self, rx: re.Pattern[str], j: int, length: int) -> bool:
        return j >= length and rx.fullmatch(self.text, j - length, j) is not None

    def valid(self, name: str, b: int, e: int) -> bool:
        return self.sentence_start(b) and _FULL[name].fullmatch(self.text, b, e) is not None

    def tail_window(self, e: int, limit: int) -> tuple[int, int]:
        """For bodies ending in ``[^.!?\\n]{0,limit}[.!]*``: (start of the final ``[.!]`` run, the
        leftmost position the ``[^.!?\\n]`` part can start at)."""
        a = self.run(_C_BANG, e)
        return a, max(a - limit, self.run(_C_PLAIN, a))


def _lit(word: str) -> re.Pattern[str]:
    return re.compile(re.escape(word), _F)


_ONLINE, _AND, _FOR, _YOU, _HOPE = _lit("online"), _lit("and"), _lit("for"), _lit("you"), _lit("hope")
_THANKS, _THANK, _WISH4, _WISHING = _lit("thanks"), _lit("thank"), _lit("wish"), _lit("wishing")
_DASH_GT = re.compile(r"-*+>")
_CONSULT_KEY = re.compile(r"for|consult", _F)
_PLAIN_80 = re.compile(r"[^.!?\n]{0,80}+")
_WORD_11 = re.compile(r"[^\s.!?]{0,11}+")


def _dash_gt(t: _Text, i: int) -> int:
    """End of ``-*>`` at ``i`` (-1 when absent)."""
    key = ("dash_gt", i)
    if key not in t.memo:
        m = _DASH_GT.match(t.text, i)
        t.memo[key] = m.end() if m else -1
    return t.memo[key]  # type: ignore[return-value]


def _consult_reach(t: _Text, o: int) -> int:
    """Leftmost start a consult body with ``online`` at ``o`` can have: X (at most 80 characters
    without ``.!?`` or newline), then at most six (whitespace, word) steps back over
    ``a``/``an``, ``consult``, ``information``, ``more``/``further``, ``for``."""
    key = ("consult_reach", o)
    if key not in t.memo:
        m = _PLAIN_80.match(t.rev, t.n - o)
        j = o - (m.end() - m.start())  # type: ignore[union-attr]
        for _ in range(6):
            j = t.ws(j)
            m = _WORD_11.match(t.rev, t.n - j)
            j -= m.end() - m.start()  # type: ignore[union-attr]
        t.memo[key] = j
    return t.memo[key]  # type: ignore[return-value]


def _find_consult(t: _Text, e: int) -> int | None:
    """``... consult a X online --> <link>``: ``online`` sits in the last three tokens."""
    text = t.text
    t0 = t.run(_C_TOKEN, e)
    onlines = []
    # "online-->link" inside the last token; X (at most 80 characters) covers the token's start
    for m in _ONLINE.finditer(text, t0, min(e, t0 + 86)):
        if 0 <= _dash_gt(t, m.end()) < e:
            onlines.append(m.start())
    t2 = t.ws(t0)  # end of the token before the last one
    if 0 < t2 < t0:
        if t.ends_with(_ONLINE, t2, 6) and 0 <= _dash_gt(t, t0) < e:  # "online -->link"
            onlines.append(t2 - 6)
        g0 = t.run(_C_GT, t2)
        if g0 < t2:
            d0 = t.run(_C_DASH, g0)
            if t.ends_with(_ONLINE, d0, 6):  # "online--> link"
                onlines.append(d0 - 6)
            s2 = t.run(_C_TOKEN, t2)
            if d0 == s2 > 0 and t.ends_with(_ONLINE, t.ws(s2), 6):  # "online --> link"
                onlines.append(t.ws(s2) - 6)
    starts = {m.start() for o in onlines for m in _CONSULT_KEY.finditer(text, _consult_reach(t, o), o)}
    return next((b for b in sorted(starts) if t.valid("consult", b, e)), None)


_REGARDS = re.compile(r"regards\b", _F)
_REGARDS_TAIL = re.compile(r"regards\b[^\n]{0,60}", _F)
_REGARDS_WORD = re.compile(r"with|best|kind|warm", _F)


def _regards_prefix(t: _Text, r: int) -> int | None:
    """Start of ``thanks and`` / ``with`` / ``best`` / ``kind`` / ``warm`` before ``regards`` at ``r``."""
    p = t.ws(r)
    if p == r:
        return None
    if t.ends_with(_REGARDS_WORD, p, 4):
        return p - 4
    if t.ends_with(_AND, p, 3):
        q = t.ws(p - 3)
        if q < p - 3:
            return _thank_start(t, q)
    return None


def _find_regards(t: _Text, e: int) -> int | None:
    for m in _REGARDS.finditer(t.text, max(0, e - 67), e):  # at most 60 characters follow
        r = m.start()
        if not _REGARDS_TAIL.fullmatch(t.text, r, e):
            continue
        q = _regards_prefix(t, r)
        if q is not None and t.valid("regards", q, e):
            return q
        if t.sentence_start(r):
            return r
    return None


_AZ = re.compile(r"[a-z]", _F)
_DR_TOKEN_REV = re.compile(r"\.?(?:rd|rotcod)", _F)  # "dr", "dr.", "doctor", "doctor." read backwards


def _find_dr(t: _Text, e: int) -> int | None:
    """``Dr. John A. Smith``: a dr token, then 1-4 words that are whole tokens, maybe a lone ``.``."""
    text, j = t.text, e
    if e >= 2 and text[e - 1] == "." and text[e - 2].isspace():
        j = t.ws(e - 1)
    starts = []  # body starts for 1, 2, 3, 4 words
    for _ in range(4):
        s = t.run(_C_TOKEN, j)
        if s == j or s == 0 or t.run(_C_WORD, j) != s or not _AZ.match(text, s):
            break
        j = t.ws(s)  # end of the token before this word
        m = _DR_TOKEN_REV.match(t.rev, t.n - j)
        if m:
            starts.append(j - (m.end() - m.start()))
    return next((b for b in reversed(starts) if t.valid("dr", b, e)), None)


_HOPE_OBJ = re.compile(r"(?<=\s)(?:this|that|it|i|my|the)\b", _F)


def _find_hope(t: _Text, e: int) -> int | None:
    a, low = t.tail_window(e, 120)
    for m in _HOPE_OBJ.finditer(t.text, max(0, low - 4), a):
        if m.end() >= low:
            h = t.ws(m.start())
            if t.ends_with(_HOPE, h, 4) and t.valid("hope", h - 4, e):
                return h - 4
    return None


_LET_ME_KNOW = re.compile(r"(?:let me know|feel free|do not hesitate|don't hesitate)\b", _F)


def _find_let_me_know(t: _Text, e: int) -> int | None:
    a, low = t.tail_window(e, 120)
    for m in _LET_ME_KNOW.finditer(t.text, max(0, low - 16), a):
        if m.end() >= low and t.valid("let_me_know", m.start(), e):
            return m.start()
    return None


_WISH_REV = re.compile(  # one wish, read backwards from its end
    r"(?:flesruoy fo )?erac ekat|sehsiw tseb|tseb eht lla|kcul doog|noos llew teg|(?:efas|yhtlaeh|llew) yats", _F
)


def _wish_at(t: _Text, j: int) -> int | None:
    """Start of the wish ("take care", "good luck", ...) ending at ``j``: the last word fixes which."""
    key = ("wish", j)
    if key not in t.memo:
        m = _WISH_REV.match(t.rev, t.n - j)
        t.memo[key] = j - (m.end() - m.start()) if m else None
    return t.memo[key]  # type: ignore[return-value]


def _wish_before(t: _Text, s: int) -> int | None:
    """Start of the wish before the ``,``/``and`` that precedes the wish at ``s``."""
    p = t.ws(s)
    if p > 0 and t.text[p - 1] == ",":
        q = p - 1
    elif t.ends_with(_AND, p, 3):
        q = p - 3
    else:
        return None
    return _wish_at(t, t.ws(q))


def _find_wish_list(t: _Text, e: int) -> int | None:
    """``Take care, good luck and get well soon.``: the leftmost wish of the list that starts a sentence."""
    last = _wish_at(t, t.ws(t.run(_C_BANG, e)))
    if last is None:
        return None
    chain: list[int] = []
    cur: int | None = last
    while cur is not None and ("wish_first", cur) not in t.memo:
        chain.append(cur)
        cur = _wish_before(t, cur)
    first = t.memo[("wish_first", cur)] if cur is not None else None
    for s in reversed(chain):  # from the list's first wish on
        if first is None and t.sentence_start(s):
            first = s
        t.memo[("wish_first", s)] = first
    b = t.memo[("wish_first", last)]  # an int or None
    return b if isinstance(b, int) and _FULL["wish_list"].fullmatch(t.text, b, e) else None


_YOU_AFTER_WS = re.compile(r"(?<=\s)you\b", _F)


def _find_wish_you(t: _Text, e: int) -> int | None:
    a, low = t.tail_window(e, 80)
    for m in _YOU_AFTER_WS.finditer(t.text, max(0, low - 3), a):
        if m.end() >= low:
            w = t.ws(m.start())
            b = w - 7 if t.ends_with(_WISHING, w, 7) else w - 4 if t.ends_with(_WISH4, w, 4) else None
            if b is not None and t.valid("wish_you", b, e):
                return b
    return None


_THANKS_VERB = re.compile(r"(?<=\s)(?:using|choosing|contacting|asking|writing)\b", _F)


def _thank_start(t: _Text, j: int) -> int | None:
    """Start of ``thanks`` or ``thank`` ending at ``j``, else None."""
    return j - 6 if t.ends_with(_THANKS, j, 6) else j - 5 if t.ends_with(_THANK, j, 5) else None


def _thank_before(t: _Text, j: int) -> int | None:
    """Start of ``thank``/``thanks`` or ``thank(s) you`` ending at ``j``."""
    start = _thank_start(t, j)
    if start is not None:
        return start
    if t.ends_with(_YOU, j, 3):
        r = t.ws(j - 3)
        if r < j - 3:
            return _thank_start(t, r)
    return None


def _find_thanks(t: _Text, e: int) -> int | None:
    a, low = t.tail_window(e, 60)
    for m in _THANKS_VERB.finditer(t.text, max(0, low - 10), a):  # "thank you for using ..."
        if m.end() >= low:
            f = t.ws(m.start())
            if t.ends_with(_FOR, f, 3) and (q := t.ws(f - 3)) < f - 3:
                b = _thank_before(t, q)
                if b is not None and t.valid("thanks", b, e):
                    return b
    b = _thank_before(t, a)  # "Thanks." / "Thank you!"
    return b if b is not None and t.valid("thanks", b, e) else None


_SIGNOFFS = (_find_consult, _find_regards, _find_dr, _find_hope, _find_let_me_know, _find_wish_list, _find_wish_you, _find_thanks)


def _strip_signoffs(text: str) -> str:
    """Cut trailing sign-offs (each finder in turn, until none finds one); capitalize as openers do."""
    original = text = text.strip()
    t = _Text(text)
    e = len(text)
    while e:
        before = e
        for find in _SIGNOFFS:
            b = find(t, e) if e else None
            if b is not None:
                e = t.ws(b)
        if e == before:
            break
    return _capitalize(text[:e], original)


#: rule name -> the rule applied to one text; the names and their order are those of ``cleaning.SPEC``
ENGINE: dict[str, Callable[[str], str]] = {
    "question_prefix": lambda text: _strip_leading(_Q_PREFIX, text),
    "question_greeting": lambda text: _strip_leading(_Q_GREETING, text),
    "answer_greeting": lambda text: _strip_leading(_A_GREETING, text),
    "answer_signoff": _strip_signoffs,
}
