"""What the gate says: one judged quantity (:class:`Check`), a case's :class:`Verdict`, and
which way each measure gets worse (the metrics registry's direction, read here for every check)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from ..metrics.registry import MEASURES, higher_is_better, two_sided
from ..results.record import CheckRecord, Status, VerdictRecord

#: the statuses that fail a case (the others: incomparable, no-baseline, improvement, pass)
FAILING = (Status.ERROR, Status.REGRESSION, Status.CHANGED)


@dataclass
class Check:
    """One judged quantity. ``passed`` False fails the case; ``kind`` says which rule judged it.

    ``name`` is text for people (``beats_base:bert_f1@seed3``); what the check judged is in
    ``metric``, ``control`` and ``seed`` (see :class:`results.record.CheckFields`), set where the
    check is made. Readers of records take them through :func:`results.record.check_fields`."""

    name: str
    value: Any
    baseline: Any
    passed: bool
    kind: str  # noise | invariant | control | ceiling | power | time | memory
    detail: str = ""
    limit: float | None = None
    delta: float | None = None
    se: float | None = None
    t: float | None = None
    df: float | None = None
    p: float | None = None  # one-sided p-value of the observed direction
    mde: float | None = None
    direction: str = ""  # down | up | ""
    ci: tuple[float, float] | None = None
    metric: str | None = None  # the score judged (under a margin: the score); None: invariant, time, memory
    control: str | None = None  # beats_<control> and margin:<control>:<metric> checks
    seed: int | None = None  # the one run judged, when the case has several (also @seed<n> in the name)

    def line(self) -> str:
        mark = "ok  " if self.passed else "FAIL"
        if self.kind == "invariant":
            return f"  [{mark}] {self.name}: {_short(self.value)} vs baseline {_short(self.baseline)} {self.detail}".rstrip()
        if self.kind in ("ceiling", "power"):
            return f"  [{mark}] {self.name}: {self.detail}"
        v = f"{self.value:.4f}" if isinstance(self.value, (int, float)) else str(self.value)
        b = f"{self.baseline:.4f}" if isinstance(self.baseline, (int, float)) else str(self.baseline)
        way = f"{_way(asdict(self))}: " if self.kind == "noise" else ""
        return f"  [{mark}] {self.name}: {v} vs {b} {way}{self.detail}".rstrip()


def _short(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 80 else s[:77] + "..."


#: what to do next, per failing status: re-recording is offered only for a rise or an intended
#: recipe change (``changed``), never for a regression (that would bless a broken model)
NEXT_STEP: dict[str, str] = {
    Status.REGRESSION: ("investigate before touching the baseline: rerun the case with --seeds 3 (-k <case id>) "
                        "and read the report (medqa-bench report <run dir>); a drop (or a rise in looping answers) "
                        "that holds is a defect to fix, not a baseline to re-record"),
    Status.CHANGED: ("a move the better way beyond the band (a score up, fewer looping answers) or a changed invariant, "
                     "not a drop: if it is intended (a recipe change), "
                     "re-record this case's baseline with --update-baselines; if not, investigate it like a regression "
                     "(rerun with --seeds 3, read the report)"),
}


def next_step(status: str) -> str:
    """The one hint for a verdict's status ('' for statuses that need none)."""
    return NEXT_STEP.get(status, "")


def _delta_text(delta: float) -> str:
    return f"{delta:+.1f}" if abs(delta) >= 1 else f"{delta:+.4f}"


def is_drop(c: Mapping[str, Any]) -> bool:
    """A noise check that failed downward: marked ``down``, or (a check without a direction) a
    negative or unknown delta. A failing score that is not known to have risen counts as a drop."""
    if c.get("kind") != "noise" or c.get("passed", True):
        return False
    if c.get("direction") in ("down", "up"):
        return c.get("direction") == "down"
    d = c.get("delta")
    return not (isinstance(d, (int, float)) and d > 0)


def _scored(name: str) -> str:
    """The measure a noise check's name judges: the score under a margin
    (``margin:<control>:<metric>``), else the name itself."""
    return name.split(":", 2)[2] if name.startswith("margin:") and name.count(":") >= 2 else name


def _higher_is_better(name: str) -> bool:
    """The registry's direction for a gated measure or a margin over a control (tuned minus
    control: better the way its score is better). KeyError for a name the registry lacks."""
    return higher_is_better(_scored(name))


def is_one_sided(name: str, gate: Any) -> bool:
    """Whether a move of ``name`` the better way beyond its band passes (``improvement``) instead
    of failing (``changed``): always for a margin over a control (beating it by more is fine),
    for a measure the registry marks one-sided, or one the profile lists in ``[gate] one_sided``."""
    return name.startswith("margin:") or name in gate.one_sided or not two_sided(name)


def worse_way(name: str) -> str:
    """Which way a noise check's metric gets worse, from the registry (``higher_is_better``):
    'down' for scores, lengths and margins over their controls, 'up' for a lower-is-better
    measure (``degenerate``). A name the registry does not know (an older record) gets 'down'."""
    m = MEASURES.get(_scored(str(name)))
    return "up" if m is not None and not m.higher_is_better else "down"


def is_worse(c: Mapping[str, Any]) -> bool:
    """A noise check that failed the bad way for its metric (:func:`worse_way`): a score down, the
    share of looping answers up. A failing check without a direction (an older record) is judged by
    the sign of its delta; with no delta either it counts as worse (never hides a regression)."""
    if c.get("kind") != "noise" or c.get("passed", True):
        return False
    way = c.get("direction")
    if way not in ("down", "up"):
        d = c.get("delta")
        if not isinstance(d, (int, float)):
            return True
        if d == 0:
            return True
        way = "up" if d > 0 else "down"
    return way == worse_way(c.get("name", ""))


def _way(c: Mapping[str, Any]) -> str:
    """'up beyond band', 'down beyond band', 'down, within band', ... for one noise check (as JSON)."""
    d = c.get("delta")
    if c.get("direction") in ("up", "down") or not c.get("passed", True):
        way = c.get("direction") or ("down" if is_drop(c) else "up")
        return f"{way} beyond band" + (" (one-sided: allowed)" if c.get("passed", True) else "")
    if not isinstance(d, (int, float)) or d == 0:
        return "unchanged, within band"
    return f"{'up' if d > 0 else 'down'}, within band"


def movement(c: Mapping[str, Any]) -> str:
    """One noise check as '<name> <up|down> <delta> beyond band' or '... (within band)'."""
    d = c.get("delta")
    dt = f" {_delta_text(d)}" if isinstance(d, (int, float)) else ""
    way = _way(c)
    if way.endswith("within band"):
        return f"{c.get('name')} {way.split(',')[0]}{dt} (within band)"
    way_word, _, rest = way.partition(" ")
    return f"{c.get('name')} {way_word}{dt} {rest}"


#: within-band moves the worse way (drops; more looping) named beside a move beyond the band (the
#: closest to their band first)
WITHIN_BAND_SHOWN = 3


def moved(checks: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every score that moved beyond its band, the worse way first (a score down, looping answers
    up: :func:`worse_way`), each with direction and delta; and, when anything moved beyond its band,
    the scores that moved the worse way *within* theirs (so a verdict made by a move the better way,
    such as ``changed``, never hides a drop). [] when nothing moved beyond a band."""
    noise = [c for c in checks if c.get("kind") == "noise"]
    beyond = [c for c in noise if c.get("direction") in ("up", "down") or not c.get("passed", True)]
    if not beyond:
        return []
    beyond.sort(key=lambda c: (not is_worse(c), c.get("passed", True)))
    out = [movement(c) for c in beyond]

    def closeness(c: Mapping[str, Any]) -> float:
        width: float = (c["baseline"] - c["limit"]) if isinstance(c.get("baseline"), (int, float)) and isinstance(
            c.get("limit"), (int, float)) else 0.0
        delta: float = abs(c["delta"])
        return delta / width if width > 0 else delta

    def worse_within(c: Mapping[str, Any]) -> bool:
        d = c.get("delta")
        return isinstance(d, (int, float)) and (d > 0 if worse_way(c.get("name", "")) == "up" else d < 0)

    within = sorted((c for c in noise if c not in beyond and worse_within(c)), key=closeness, reverse=True)
    out += [movement(c) for c in within[:WITHIN_BAND_SHOWN]]
    if len(within) > WITHIN_BAND_SHOWN:
        out.append(f"{len(within) - WITHIN_BAND_SHOWN} more worse within band")
    return out


@dataclass
class Verdict:
    case_id: str
    #: a Status value, kept as the plain str: it travels in pytest's user properties, which
    #: pytest-xdist serializes by exact type (an enum member would not cross to the controller)
    status: str
    checks: list[Check] = field(default_factory=list)
    note: str = ""

    def __post_init__(self) -> None:
        self.status = Status(self.status).value  # any other text: ValueError

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def failed(self) -> bool:
        return self.status in FAILING

    def explain(self) -> str:
        """The head line (status, note, and which scores moved which way, with their deltas), the
        failing checks, then the other scores and controls, and for a failing status what to do next."""
        as_json = [asdict(c) for c in self.checks]
        moves = moved(as_json)
        others = [c for c in self.failures if c.kind != "noise"]
        what = [*moves, *(f"{c.name} {100 * c.value:.1f}% >= {100 * c.limit:g}%" if c.kind == "ceiling" and c.limit is not None
                          else f"{c.name} failed ({c.kind})" for c in others)]
        head = (f"{self.case_id}: {self.status}" + (f" ({self.note})" if self.note else "")
                + (f": {'; '.join(what)}" if what else ""))
        shown = [*self.failures, *(c for c in self.checks if c.passed and c.kind in ("noise", "control"))]
        hint = next_step(self.status)
        return "\n".join([head, *(c.line() for c in shown), *([f"  next: {hint}"] if hint else [])])

    def to_json(self) -> VerdictRecord:
        return {"status": self.status, "note": self.note, "explain": self.explain(),
                "checks": [cast(CheckRecord, asdict(c)) for c in self.checks]}
