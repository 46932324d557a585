"""What a report shows, before any format: the :class:`Report` (records, baseline, history,
trends, aggregates) and the state of each heatmap cell and case-level check."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

from ...metrics import METRICS
from ...metrics.registry import MEASURES
from ..record import BaselineFile, CaseRecord, Status, check_fields, judges_score
from ..summary import (
    _row_values,
)

HISTORY_METRICS = ("bert_f1", "use_f1")


STATUS_COLOUR: dict[str, str] = {Status.REGRESSION: "#c0392b", Status.IMPROVEMENT: "#1e8449", Status.PASS: "#34495e",
                 Status.NO_BASELINE: "#7f8c8d"}


#: a record without a verdict (not a status the gate gives): its cells and badge
UNJUDGED = "unjudged"


@dataclass
class Report:
    title: str
    records: list[CaseRecord]
    baseline: BaselineFile | None
    history_series: dict[str, dict[str, list[tuple[str, float]]]] = field(default_factory=dict)  # case -> metric -> rows
    trends: dict[str, dict[str, list[Any]]] = field(default_factory=dict)  # case -> metric -> [Shift]
    run_id: str | None = None
    aggregates: list[Any] = field(default_factory=list)  # gate.Aggregate: family and suite verdicts


def trend_lines(rep: Report) -> list[str]:
    return [f"{cid}: {sh.explain(m)}" for cid in sorted(rep.trends) for m, found in rep.trends[cid].items() for sh in found]


def case_verdicts(rep: Report) -> list[tuple[str, str]]:
    return [((r.get("verdict") or {}).get("status", "unknown"), (r.get("verdict") or {}).get("explain", r["case_id"]))
            for r in rep.records]


#: heatmap columns: the gated scores, then one column each for the case-level checks
HEAT_METRICS = (*METRICS, "answer_words")


CASE_CHECKS = {"controls": ("control",), "invariants": ("invariant",), "resources": ("time", "memory")}


#: cell classes (CSS) per judged state
CELL_CLASSES = (Status.PASS, Status.REGRESSION, Status.CHANGED, Status.IMPROVEMENT, Status.INCOMPARABLE,
                Status.NO_BASELINE, Status.ERROR, UNJUDGED)


class CellState(TypedDict):
    """What one heatmap cell shows (:func:`cell_state`, :func:`case_check_state`): its CSS class
    (a status or :data:`UNJUDGED`), its text, the interval line below it and its tooltip."""

    cls: str
    text: str
    band: str
    title: str


def cell_state(rec: CaseRecord, metric: str, baseline: BaselineFile | None) -> CellState:
    """What the heatmap shows for one case x metric: the verdict class of that metric's check, the
    delta against the baseline, the interval (the noise band, or a bootstrap CI) and a tooltip."""
    v = rec.get("verdict") or {}
    status = v.get("status", UNJUDGED)
    value = _row_values(rec).get(metric)  # the mean over the case's runs, like every other column
    if status == Status.ERROR:
        return {"cls": Status.ERROR, "text": "error", "band": "", "title": f"{metric}: case error: {v.get('note', '')}"}
    chk = next((c for c in v.get("checks", []) if judges_score(c, metric)), None)
    base_case: Mapping[str, Any] = ((baseline or {}).get("cases") or {}).get(rec["case_id"]) or {}
    if chk is None:
        b = (base_case.get("metrics") or {}).get(metric)
        cls = Status.INCOMPARABLE if status == Status.INCOMPARABLE else (Status.NO_BASELINE if b is None else UNJUDGED)
        if value is None:
            return {"cls": cls, "text": "-", "band": "", "title": f"{metric}: no value"}
        text = f"{value - b:+.3f}" if isinstance(b, (int, float)) else f"{value:.3f}"
        note = {Status.INCOMPARABLE: f"baseline recorded on other inputs: {v.get('note', '')}",
                Status.NO_BASELINE: "no baseline entry for this case", UNJUDGED: "not judged by the gate"}[cls]
        return {"cls": cls, "text": text, "band": "", "title": f"{metric}: {value:.4f}; {note}"}
    # which way is better is the registry's (a score up; fewer looping answers)
    better = "up" if metric not in MEASURES or MEASURES[metric].higher_is_better else "down"
    if chk.get("passed"):
        cls = Status.IMPROVEMENT if chk.get("direction") == better else Status.PASS
    else:
        cls = Status.CHANGED if chk.get("direction") == better else Status.REGRESSION
    delta = chk.get("delta")
    band = ""
    ci = chk.get("ci")
    if ci:
        lo, hi = ci
        band = f"CI {lo:.3f}..{hi:.3f}"
    elif isinstance(chk.get("limit"), (int, float)) and isinstance(chk.get("baseline"), (int, float)):
        band = f"\u00b1{chk['baseline'] - chk['limit']:.3f}"
    value_s = f"{chk['value']:.4f}" if isinstance(chk.get("value"), (int, float)) else str(chk.get("value"))
    base_s = f"{chk['baseline']:.4f}" if isinstance(chk.get("baseline"), (int, float)) else str(chk.get("baseline"))
    title = f"{metric}: {value_s} vs baseline {base_s} ({cls}); {chk.get('detail', '')}"
    return {"cls": cls, "text": f"{delta:+.3f}" if isinstance(delta, (int, float)) else "-", "band": band, "title": title}


def case_check_state(rec: CaseRecord, column: str) -> CellState:
    """The case-level columns: controls (must beat the base model...), invariants, time/memory."""
    v = rec.get("verdict") or {}
    kinds = CASE_CHECKS[column]
    # the controls column also carries the gated margins over the controls (noise checks with a control)
    checks = [c for c in v.get("checks", []) if c.get("kind") in kinds
              or (column == "controls" and c.get("kind") == "noise" and check_fields(c).control is not None)]
    if v.get("status") == Status.ERROR:
        return {"cls": Status.ERROR, "text": "error", "band": "", "title": f"{column}: case error"}
    if not checks:
        return {"cls": UNJUDGED, "text": "-", "band": "", "title": f"{column}: not checked in this run"}
    bad = [c for c in checks if not c.get("passed", True)]
    if not bad:
        return {"cls": Status.PASS, "text": f"{len(checks)} ok", "band": "", "title": f"{column}: all {len(checks)} checks pass"}
    from ..summary import check_reason

    cls = Status.CHANGED if column == "invariants" else Status.REGRESSION
    beats_base = column == "controls" and any(c.get("kind") == "control" and check_fields(c).control == "base" for c in bad)
    margins_only = column == "controls" and all(c.get("kind") == "noise" for c in bad)  # the column's noise checks: margins
    text = "not > base" if beats_base else ("margin \u2193" if margins_only else f"{len(bad)} fail")
    return {"cls": cls, "text": text, "band": "", "title": "; ".join(check_reason(c) for c in bad)}
