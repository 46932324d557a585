"""Change-point detection over a case's nightly history (``ruptures`` PELT, least-squares cost).

A fixed threshold against one baseline misses a metric that slides a little every night. Here
the whole series of one case's metric is segmented into runs of constant mean; consecutive
breakpoints that move the level the same way are one *shift*. Around each shift a two-level
fit and a "flat, then sloped" (hinge) fit are compared: the better one says whether it is a
``step`` (dated at PELT's breakpoint, the first run of the new level) or a ``drift`` (dated
where the slope starts). A shift is reported only when its total size reaches a minimum effect
(for scores half the gate tolerance, see :func:`case_trends`).

Penalty: ``penalty * sigma^2 * log(n)`` (a BIC-style penalty for the least-squares cost), with
sigma estimated robustly from the first differences (MAD / 0.6745 / sqrt(2)) and floored at a
quarter of the minimum effect so a bit-identical history never splits on float jitter. On
simulated series (n = 30, noise sd 0.005) penalty 6 gave 1% false alarms on flat series and
found a 0.02 step at the exact run in 95% of series (``python scripts/trend_simulation.py``).

Bounded per session: :func:`case_trends` (run at every pytest session end) looks at the newest
``window`` runs of each series only (default :data:`DEFAULT_WINDOW`, ``MEDQA_TREND_WINDOW``;
0 = the whole stored series) and reads at most ``SCAN_FACTOR * window`` stored results of a case,
so its time does not grow with the history. PELT itself is computed here (:func:`_pelt`): the
same recursion, pruning and tie-breaking as ``ruptures.Pelt(model="l2", min_size=2, jump=1)``,
with each segment's cost taken from cumulative sums in O(1) instead of a variance over the
segment, so one series of ``n`` runs costs O(n * admissible points) vector work rather than
ruptures' Python loop (tests/unit/test_trend_scale.py checks both give the same breakpoints).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from ..errors import MedQAError
from ..metrics import registry

if TYPE_CHECKING:
    from .history import CaseRow

DEFAULT_PENALTY = 6.0
MIN_SIZE = 2  # runs per segment
#: runs per series that :func:`case_trends` looks at (the newest ones); ``MEDQA_TREND_WINDOW`` overrides
DEFAULT_WINDOW = 200
#: stored results of a case read per window (a series is one hardware class: with several classes
#: alternating, each still gets its window as long as at most this many share the case)
SCAN_FACTOR = 4
WINDOW_ENV = "MEDQA_TREND_WINDOW"


class TrendError(MedQAError):
    """The trend of a case could not be computed (a bad window setting, an unreadable history)."""


def trend_window(window: int | None = None) -> int:
    """The series window in runs: ``window`` if given, else ``$MEDQA_TREND_WINDOW``, else
    :data:`DEFAULT_WINDOW`; 0 means the whole stored series (unbounded)."""
    if window is None:
        raw = os.environ.get(WINDOW_ENV, "").strip()
        if not raw:
            return DEFAULT_WINDOW
        try:
            window = int(raw)
        except ValueError:
            raise TrendError(f"{WINDOW_ENV}={raw!r}: give a whole number of runs (0 = the whole history)") from None
    if window < 0 or (0 < window < 2 * MIN_SIZE):
        raise TrendError(f"trend window {window}: give 0 (the whole history) or at least {2 * MIN_SIZE} runs")
    return int(window)


class ShiftJson(TypedDict):
    """A :class:`Shift` as JSON (:meth:`Shift.to_json`): its fields, then its ``delta``."""

    start: int
    run_id: str | None
    before: float
    after: float
    kind: str
    breakpoints: tuple[int, ...]
    hardware_class: str | None
    delta: float


@dataclass(frozen=True)
class Shift:
    start: int  # index of the first run at the new level
    run_id: str | None
    before: float  # mean of the segment before the shift
    after: float  # mean of the last segment of the shift
    kind: str  # step | drift
    breakpoints: tuple[int, ...]
    hardware_class: str | None = None  # the series' hardware class (case_trends), None for a bare series

    @property
    def delta(self) -> float:
        return self.after - self.before

    def to_json(self) -> ShiftJson:
        return ShiftJson(start=self.start, run_id=self.run_id, before=self.before, after=self.after, kind=self.kind,
                         breakpoints=self.breakpoints, hardware_class=self.hardware_class, delta=self.delta)

    def explain(self, metric: str) -> str:
        where = f"run {self.start}" + (f" ({self.run_id})" if self.run_id else "")
        return (f"{metric}: {self.kind} {'down' if self.delta < 0 else 'up'} by {self.delta:+.4f} "
                f"({self.before:.4f} -> {self.after:.4f}) starting at {where}"
                + (f" on {self.hardware_class}" if self.hardware_class else ""))


def noise_sigma(x: np.ndarray) -> float:
    if x.size < 3:
        return 0.0
    return float(np.median(np.abs(np.diff(x))) / 0.6745 / np.sqrt(2))


def breakpoints(values: Sequence[float] | np.ndarray, min_effect: float, penalty: float = DEFAULT_PENALTY) -> list[int]:
    """Indices where a new segment starts (PELT on the least-squares cost, see :func:`_pelt`)."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n < 2 * MIN_SIZE:
        return []
    sigma = max(noise_sigma(x), min_effect / 4, 1e-9)
    return _pelt(x, penalty * sigma**2 * np.log(n))


def _pelt(x: np.ndarray, pen: float, min_size: int = MIN_SIZE) -> list[int]:
    """Breakpoints (segment starts, without ``len(x)``) of the penalised least-squares segmentation.

    ruptures' ``Pelt(model="l2", min_size, jump=1)._seg`` step for step, with the same answers:
    candidate ends ``min_size .. n``; the optimal cost ``F[s] = min_t F[t] + (cost(t, s) + pen)``
    over the admissible starts in ascending order, the first minimum winning ties; a start stays
    admissible while ``F[t] + cost(t, s) + pen <= F[s] + pen``.

    Every admissible start is costed at once from cumulative sums of the centred series (O(1)
    each). Those sums round differently from ruptures' per-segment variance, so where that could
    change the choice (the starts within ``tie`` of the minimum) the cost is taken exactly as
    ruptures takes it (``x[t:s].var() * (s - t)``) and ``F`` is always that exact value: ties in
    discrete (rounded) scores break as in ruptures. A start within ``tie`` of the pruning bound is
    kept (pruning never removes the optimum; keeping one more start only costs time)."""
    n = x.size
    x2 = x.reshape(-1, 1)
    c = x - x.mean()  # centred: the cumulative sums stay small, the fast cost keeps its precision
    s1 = np.concatenate(([0.0], np.cumsum(c)))
    s2 = np.concatenate(([0.0], np.cumsum(c * c)))
    tie = 1e-9 * (float(s2[-1]) + pen) + 1e-300  # far above the rounding of the fast cost, far below any real gap

    def exact(t: int, end: int) -> float:
        cost: float = x2[t:end].var(axis=0).sum() * (end - t)
        return cost

    f = np.full(n + 1, np.nan)
    f[0] = 0.0
    prev = np.zeros(n + 1, dtype=np.int64)
    adm = np.zeros(0, dtype=np.int64)
    for end in [*range(min_size, n), n]:
        t_new = end - min_size
        if t_new == 0 or t_new >= min_size:  # 0 < t < min_size ends no partition: never a start
            adm = np.append(adm, t_new)
        d1 = s1[end] - s1[adm]
        vals = f[adm] + (np.maximum((s2[end] - s2[adm]) - d1 * d1 / (end - adm), 0.0) + pen)
        near = np.flatnonzero(vals <= vals.min() + tie)
        for j in near:  # exact costs where the minimum is decided
            vals[j] = f[adm[j]] + (exact(int(adm[j]), end) + pen)
        i = int(near[np.argmin(vals[near])])  # the first exact minimum, as min() over ruptures' subproblems
        f[end], prev[end] = vals[i], adm[i]
        adm = adm[vals <= f[end] + pen + tie]  # a start within rounding of the bound stays (never loses the optimum)
    out: list[int] = []
    end = n
    while end > 0:
        end = int(prev[end])
        if end > 0:
            out.append(end)
    return out[::-1]


def _best_step(x: np.ndarray) -> tuple[float, int]:
    """Least-squares two-level fit: (SSE, first index of the second level)."""
    best = (np.inf, 0)
    for k in range(MIN_SIZE, x.size - MIN_SIZE + 1):
        sse = float(((x[:k] - x[:k].mean()) ** 2).sum() + ((x[k:] - x[k:].mean()) ** 2).sum())
        best = min(best, (sse, k))
    return best


def _best_hinge(x: np.ndarray) -> tuple[float, int]:
    """Least-squares fit "flat, then a straight slope from run k on": (SSE, k)."""
    t = np.arange(x.size)
    best = (np.inf, 0)
    for k in range(1, x.size - 1):
        a = np.c_[np.ones(x.size), np.maximum(t - k + 1, 0)]  # the first sloped point is run k
        coef = np.linalg.lstsq(a, x, rcond=None)[0]
        best = min(best, (float(((a @ coef - x) ** 2).sum()), k))
    return best


def _date(x: np.ndarray, lo: int, hi: int, first_bk: int) -> tuple[str, int]:
    """Step or drift, and where it starts, from the runs ``lo:hi`` around a shift. PELT's
    breakpoints date a step exactly but put a slow slide's start late (where the level has
    moved enough); a hinge fit dates a slide from its first run."""
    w = x[lo:hi]
    if w.size < 2 * MIN_SIZE + 1:
        return "step", first_bk
    step_sse, _ = _best_step(w)
    hinge_sse, k = _best_hinge(w)
    return ("drift", lo + k) if hinge_sse < step_sse else ("step", first_bk)


def shifts(
    values: Sequence[float], min_effect: float, run_ids: Sequence[str] | None = None,
    penalty: float = DEFAULT_PENALTY,
) -> list[Shift]:
    """Level shifts of at least ``min_effect`` in a series (oldest run first)."""
    x = np.asarray(values, dtype=np.float64)
    bks = breakpoints(x, min_effect, penalty)
    if not bks:
        return []
    edges = [0, *bks, x.size]
    means = [float(x[a:b].mean()) for a, b in zip(edges, edges[1:])]
    out: list[Shift] = []
    i = 0
    while i < len(bks):
        sign = np.sign(means[i + 1] - means[i])
        j = i
        while j + 1 < len(bks) and np.sign(means[j + 2] - means[j + 1]) == sign:
            j += 1  # the next breakpoint continues the same direction: one drift
        before, after = means[i], means[j + 1]
        if abs(after - before) >= min_effect:
            kind, start = _date(x, edges[i], edges[j + 2], bks[i])
            out.append(Shift(start, run_ids[start] if run_ids is not None else None, before, after,
                             kind, tuple(bks[i:j + 1])))
        i = j + 1
    return out


def regressions(values: Sequence[float], min_effect: float, run_ids: Sequence[str] | None = None,
                higher_is_better: bool = True, penalty: float = DEFAULT_PENALTY) -> list[Shift]:
    """Only the shifts that make things worse (down for scores, up for time and memory)."""
    return [s for s in shifts(values, min_effect, run_ids, penalty) if (s.delta < 0) == higher_is_better]


RESOURCE_MIN_EFFECT = 0.25  # a time or memory level shift counts from 25% of the series' median
# A score shift counts from half its gate tolerance: the trend warns about a slide while each
# night still passes its own gate (and keeps warning when baselines are re-recorded along it).
TREND_EFFECT_FRACTION = 0.5
RESOURCES = registry.RESOURCES


def same_inputs(rows: list[CaseRow]) -> list[CaseRow]:
    """The rows measured on the same inputs (data, test set, scorer: gate.IDENTITY_KEYS) as the
    newest one: a series never spans a change of data or scorer, so such a change is no step."""
    from ..gate import IDENTITY_KEYS

    def ident(rec: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple((rec.get("identity") or {}).get(k) for k in IDENTITY_KEYS)

    if not rows:
        return rows
    last = ident(rows[-1][2])
    return [r for r in rows if ident(r[2]) == last]


def by_hardware_class(rows: list[CaseRow]) -> dict[str | None, list[CaseRow]]:
    """The rows split into one series per hardware class (in order of each class's first run): a
    night that ran the case on another GPU model is another series, never a step in this one."""
    out: dict[str | None, list[CaseRow]] = {}
    for row in rows:
        out.setdefault(row[1], []).append(row)
    return out


def case_trends(history: Any, case_ids: Sequence[str], profile: str | None, tolerances: dict[str, float],
                hardware_class: str | None = None, min_runs: int = 2 * MIN_SIZE,
                penalty: float = DEFAULT_PENALTY, memory_slack_mib: float = 0.0,
                window: int | None = None) -> dict[str, dict[str, list[Shift]]]:
    """Worsening shifts per case and metric over the recent stored history of ``profile``.

    A series is one case on one hardware class (the record's own, see
    :meth:`History.case_rows`), on the newest run's inputs (:func:`same_inputs`): like is
    compared with like, so neither a change of data or scorer nor a night on another GPU model
    is read as a step. With ``hardware_class`` only that class's series are read; otherwise every
    class's, and each shift names its class.

    Window: each metric's series is its newest ``window`` values (:func:`trend_window`: default
    :data:`DEFAULT_WINDOW`, ``$MEDQA_TREND_WINDOW``, 0 = all), taken from at most the newest
    ``SCAN_FACTOR * window`` stored results of the case, so the work per case is bounded however
    long the history grows. A shift older than the window is no longer reported; its new level is
    the series' level. Shift indices (``Shift.start``) count from the window's first run.

    Scores use half their gate tolerance as minimum effect; training time and memory (higher is
    worse) use 25% of the series' median, memory at least the gate's ``memory_slack_mib`` (on
    CPU the RSS growth of a small run moves by tens of MiB with what the process did before).

    Raises only :class:`~medqa_core.errors.MedQAError` (a locked or unreadable history, a bad
    window): the pytest session end catches it and prints one line."""
    cid = ""
    try:
        win = trend_window(window)
        out: dict[str, dict[str, list[Shift]]] = {}
        for cid in case_ids:
            found = _case_shifts(history, cid, profile, tolerances, hardware_class, min_runs, penalty,
                                 memory_slack_mib, win)
            if found:
                out[cid] = found
        return out
    except MedQAError:
        raise
    except Exception as exc:  # the session end must get one line, never a traceback
        raise TrendError(f"trend of case {cid or '?'} not computed ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:300]})") from exc


def _recent_rows(history: Any, case_id: str, profile: str | None, win: int) -> list[CaseRow]:
    """The case's stored rows a trend needs: the newest ``SCAN_FACTOR * win`` (all when ``win`` is 0),
    read lean (:meth:`History.trend_rows`) where the history offers it."""
    reader = getattr(history, "trend_rows", None)
    if reader is not None:
        lean: list[CaseRow] = reader(case_id, profile, last=SCAN_FACTOR * win if win else None)
        return lean
    rows: list[CaseRow] = history.case_rows(case_id, profile)
    return rows[-SCAN_FACTOR * win:] if win else rows


def _case_shifts(history: Any, cid: str, profile: str | None, tolerances: dict[str, float],
                 hardware_class: str | None, min_runs: int, penalty: float, memory_slack_mib: float,
                 win: int) -> dict[str, list[Shift]]:
    from ..metrics import METRICS
    from ..metrics.registry import DEFAULT_MIN_EFFECT
    from .history import series_of

    found: dict[str, list[Shift]] = {}
    case_rows = same_inputs(_recent_rows(history, cid, profile, win))  # one read per case, every metric from it
    for hw, hw_rows in by_hardware_class(case_rows).items():
        if hardware_class is not None and hw != hardware_class:
            continue
        for metric in (*METRICS, *RESOURCES):
            is_res = metric in RESOURCES
            rows = series_of(hw_rows, metric)
            if win:
                rows = rows[-win:]
            if len(rows) < min_runs:
                continue
            ids, vals = [r for r, _ in rows], [v for _, v in rows]
            if metric == "mem_mib":
                eff = max(RESOURCE_MIN_EFFECT * float(np.median(vals)), memory_slack_mib)
            elif is_res:
                eff = RESOURCE_MIN_EFFECT * float(np.median(vals))
            else:
                eff = TREND_EFFECT_FRACTION * tolerances.get(metric, DEFAULT_MIN_EFFECT[metric])
            hits = regressions(vals, eff, ids, higher_is_better=registry.higher_is_better(metric), penalty=penalty)
            if hits:
                found.setdefault(metric, []).extend(replace(h, hardware_class=hw) for h in hits)
    return found
