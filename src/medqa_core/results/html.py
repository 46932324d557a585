"""``medqa-bench report``: a run as markdown and as one self-contained HTML page with plots.

Read top to bottom, the HTML page answers "what failed and why" first: the verdict counts, a
cases x metrics heatmap (each cell the delta against the baseline coloured by that check's
verdict, the noise band or CI below it, the gate's numbers in its tooltip; then the case-level
controls, invariants and resources, and a sparkline of the case's history), the failing cases
with the verdict's own reasons ("does not beat the base model on bert_f1: ..."), a per-family
panel (verdict counts, mean deltas, the family's aggregate verdict), then the Table-2 layout,
the base model and controls beside each score with the MDE, the bar charts per metric, the
history plots with trend shifts and the full verdicts. Everything is inline (CSS, SVG, base64 PNGs): no network, so it can be
mailed or uploaded as a CI artifact as it is.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..metrics import METRICS
from ..metrics.registry import MEASURES
from .record import CaseRecord, Status, check_fields, judges_score
from .summary import (
    CONTROL_HEADER,
    _baseline_values,
    _row_values,
    control_rows,
    controls_legend,
    details_markdown,
    failure_reasons,
    header,
    markdown_table,
    md_cell,
    md_fence,
    next_step,
    runs_legend,
    runs_phrase,
    table_rows,
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
    baseline: dict[str, Any] | None
    history_series: dict[str, dict[str, list[tuple[str, float]]]] = field(default_factory=dict)  # case -> metric -> rows
    trends: dict[str, dict[str, list[Any]]] = field(default_factory=dict)  # case -> metric -> [Shift]
    run_id: str | None = None
    aggregates: list[Any] = field(default_factory=list)  # gate.Aggregate: family and suite verdicts


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def bars_png(rep: Report) -> bytes:
    """One panel per metric: this run's value per case, the baseline beside it, failures in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    recs = rep.records
    cases = [r["case_id"] for r in recs]
    base_cases = (rep.baseline or {}).get("cases", {})
    fig, axes = plt.subplots(len(METRICS), 1, figsize=(max(6, 0.55 * len(cases) + 2), 2.0 * len(METRICS)), sharex=True)
    x = np.arange(len(cases))
    for ax, m in zip(axes, METRICS):
        cur = [_row_values(r).get(m, np.nan) for r in recs]  # the mean over the runs; an error record has none
        base = [_baseline_values(base_cases.get(c)).get(m, np.nan) for c in cases]
        failed = [any(judges_score(ch, m) and not ch["passed"] for ch in (r.get("verdict") or {}).get("checks", [])) for r in recs]
        ax.bar(x - 0.2, base, 0.4, color="#b0bec5", label="baseline")
        ax.bar(x + 0.2, cur, 0.4, color=["#c0392b" if f else "#2e86c1" for f in failed], label="this run")
        ax.set_ylabel(m)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=8, ncol=2)
    how = runs_phrase(recs)
    axes[0].set_title(f"{rep.title}: per-metric scores vs baseline (red = regression)" + (f"; this run: {how}" if how else ""))
    axes[-1].set_xticks(x, cases, rotation=60, ha="right", fontsize=8)
    return _png(fig)


def history_png(rep: Report) -> bytes | None:
    """Small multiples, one per case: the history of BERTScore F1 and USE F1, shifts marked."""
    cases = sorted(c for c, per in rep.history_series.items() if max((len(v) for v in per.values()), default=0) >= 2)
    if not cases:
        return None  # nothing has a history yet
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(cases))
    rows = -(-len(cases) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.4 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(cases):]:
        ax.axis("off")
    for ax, cid in zip(axes.flat, cases):
        for m, colour in zip(HISTORY_METRICS, ("#2e86c1", "#e67e22")):
            rows_m = rep.history_series[cid].get(m, [])
            ax.plot(range(len(rows_m)), [v for _, v in rows_m], marker="o", ms=3, color=colour, label=m)
            for sh in rep.trends.get(cid, {}).get(m, []):
                ax.axvline(sh.start - 0.5, color=colour, ls="--", lw=1)
        ax.set_title(cid, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("history per case (x = run number; dashed = shift found)", fontsize=10, y=1.0)
    fig.tight_layout()
    return _png(fig)


def _trend_lines(rep: Report) -> list[str]:
    return [f"{cid}: {sh.explain(m)}" for cid in sorted(rep.trends) for m, found in rep.trends[cid].items() for sh in found]


def _verdicts(rep: Report) -> list[tuple[str, str]]:
    return [((r.get("verdict") or {}).get("status", "unknown"), (r.get("verdict") or {}).get("explain", r["case_id"]))
            for r in rep.records]


def to_markdown(rep: Report, images: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for status, _ in _verdicts(rep):
        counts[status] = counts.get(status, 0) + 1
    # the title (a profile name, a run id) and the statuses come from files: text, never raw HTML
    out = [f"# {md_cell(rep.title)}", "", "Verdicts: " + ", ".join(f"{md_cell(k)} {v}" for k, v in sorted(counts.items())), "",
           "## Results (delta vs baseline)", "", markdown_table(rep.records, rep.baseline), "",
           "## Base model, controls and power", "", details_markdown(rep.records), ""]
    for name, alt in (("bars", "scores vs baseline"), ("history", "history per case")):
        if name in images:
            out += [f"![{alt}]({images[name]})", ""]
    if rep.aggregates:
        out += ["## Family and suite verdicts", ""] + md_fence("\n".join(a.line() for a in rep.aggregates)) + [""]
    trends = _trend_lines(rep)
    out += ["## Trends in the history", ""] + ([f"- {md_cell(t)}" for t in trends] if trends else
                                                ["No worsening shift found." if rep.history_series else "No history given."]) + [""]
    out += ["## Verdict details", ""]
    for _, text in _verdicts(rep):
        out += md_fence(text)
    return "\n".join(out) + "\n"


# ---- the ten-second view: heatmap of deltas, family panel, sparklines -----------------------------

#: heatmap columns: the gated scores, then one column each for the case-level checks
HEAT_METRICS = (*METRICS, "answer_words")
CASE_CHECKS = {"controls": ("control",), "invariants": ("invariant",), "resources": ("time", "memory")}
#: cell classes (CSS) per judged state
CELL_CLASSES = (Status.PASS, Status.REGRESSION, Status.CHANGED, Status.IMPROVEMENT, Status.INCOMPARABLE,
                Status.NO_BASELINE, Status.ERROR, UNJUDGED)


def cell_state(rec: CaseRecord, metric: str, baseline: dict[str, Any] | None) -> dict[str, Any]:
    """What the heatmap shows for one case x metric: the verdict class of that metric's check, the
    delta against the baseline, the interval (the noise band, or a bootstrap CI) and a tooltip."""
    v = rec.get("verdict") or {}
    status = v.get("status", UNJUDGED)
    value = _row_values(rec).get(metric)  # the mean over the case's runs, like every other column
    if status == Status.ERROR:
        return {"cls": Status.ERROR, "text": "error", "band": "", "title": f"{metric}: case error: {v.get('note', '')}"}
    chk = next((c for c in v.get("checks", []) if judges_score(c, metric)), None)
    base_case = ((baseline or {}).get("cases") or {}).get(rec["case_id"]) or {}
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
    if chk.get("ci"):
        lo, hi = chk["ci"]
        band = f"CI {lo:.3f}..{hi:.3f}"
    elif isinstance(chk.get("limit"), (int, float)) and isinstance(chk.get("baseline"), (int, float)):
        band = f"\u00b1{chk['baseline'] - chk['limit']:.3f}"
    value_s = f"{chk['value']:.4f}" if isinstance(chk.get("value"), (int, float)) else str(chk.get("value"))
    base_s = f"{chk['baseline']:.4f}" if isinstance(chk.get("baseline"), (int, float)) else str(chk.get("baseline"))
    title = f"{metric}: {value_s} vs baseline {base_s} ({cls}); {chk.get('detail', '')}"
    return {"cls": cls, "text": f"{delta:+.3f}" if isinstance(delta, (int, float)) else "-", "band": band, "title": title}


def case_check_state(rec: CaseRecord, column: str) -> dict[str, Any]:
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
    from .summary import check_reason

    cls = Status.CHANGED if column == "invariants" else Status.REGRESSION
    beats_base = column == "controls" and any(c.get("kind") == "control" and check_fields(c).control == "base" for c in bad)
    margins_only = column == "controls" and all(c.get("kind") == "noise" for c in bad)  # the column's noise checks: margins
    text = "not > base" if beats_base else ("margin \u2193" if margins_only else f"{len(bad)} fail")
    return {"cls": cls, "text": text, "band": "", "title": "; ".join(check_reason(c) for c in bad)}


def sparkline_svg(points: list[float], shifts: list[int] | None = None, width: int = 110, height: int = 26) -> str:
    """An inline SVG line of a case's history (last point = newest, drawn as a dot; dashed = shift)."""
    if len(points) < 2:
        return ""
    lo, hi = min(points), max(points)
    span = (hi - lo) or 1.0
    step = (width - 6) / (len(points) - 1)
    xy = [(3 + i * step, height - 3 - (p - lo) / span * (height - 6)) for i, p in enumerate(points)]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    marks = "".join(f'<line x1="{3 + (k - 0.5) * step:.1f}" x2="{3 + (k - 0.5) * step:.1f}" y1="0" y2="{height}" '
                    'stroke="#c0392b" stroke-dasharray="2,2"/>' for k in (shifts or []) if 0 < k < len(points))
    x, y = xy[-1]
    return (f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
            f'{marks}<polyline fill="none" stroke="#2e86c1" stroke-width="1.5" points="{path}"/>'
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="#2e86c1"/></svg>')


def heatmap_html(rep: Report) -> str:
    """Cases x metrics: each cell the delta against the baseline, coloured by that check's verdict,
    the interval below it and the gate's numbers in the tooltip; then the case-level checks and the
    history sparkline of the case's BERTScore F1."""
    e = html.escape
    cols = [*HEAT_METRICS, *CASE_CHECKS]
    head = "".join(f"<th>{e(c)}</th>" for c in ["case", "verdict", *cols, f"history ({HISTORY_METRICS[0]})"])
    rows = []
    for rec in rep.records:
        cid = rec["case_id"]
        status = (rec.get("verdict") or {}).get("status", UNJUDGED)
        cells = []
        for m in HEAT_METRICS:
            st = cell_state(rec, m, rep.baseline)
            cells.append(f'<td class="cell {e(st["cls"])}" data-case="{e(cid)}" data-metric="{e(m)}" title="{e(st["title"])}">'
                         f'{e(st["text"])}<small>{e(st["band"])}</small></td>')
        for col in CASE_CHECKS:
            st = case_check_state(rec, col)
            cells.append(f'<td class="check {e(st["cls"])}" data-case="{e(cid)}" data-check="{e(col)}" '
                         f'title="{e(st["title"])}">{e(st["text"])}</td>')
        series = rep.history_series.get(cid, {}).get(HISTORY_METRICS[0], [])
        shifts = [sh.start for sh in rep.trends.get(cid, {}).get(HISTORY_METRICS[0], [])]
        spark = sparkline_svg([v for _, v in series], shifts)
        tip = (f"{len(series)} stored runs: " + ", ".join(f"{v:.3f}" for _, v in series[-8:])) if series else "no history"
        cells.append(f'<td class="hist" title="{e(tip)}">{spark or "-"}</td>')
        rows.append(f'<tr><th class="case">{e(cid)}</th><td class="badge {e(status)}">{e(status)}</td>{"".join(cells)}</tr>')
    legend = "".join(f'<span class="cell {c}">{c}</span>' for c in CELL_CLASSES)
    how = runs_phrase(rep.records)
    what = f"delta of {e(how)} vs the baseline's mean" if how else "delta vs baseline"
    return (f'<table class="heat"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            f'<p class="legend">cell = {what} (small: the noise band or CI; hover for the gate\'s numbers): {legend}</p>')


#: reasons shown per case before "+N more" (the rest one click away)
WHY_SHOWN = 2


def why_html(rep: Report) -> str:
    e = html.escape
    items = [(r["case_id"], (r.get("verdict") or {}).get("status", "?"), failure_reasons(r)) for r in rep.records]
    items = [i for i in items if i[2]]
    if not items:
        return "<p class='ok'>Every case passed its gate.</p>"
    hints = {r["case_id"]: next_step(r) for r in rep.records}

    def one(cid: str, st: str, reasons: list[str]) -> str:
        head = f"<strong>{e(cid)}</strong> <span class='badge {e(st)}'>{e(st)}</span> " + "; ".join(
            e(x) for x in reasons[:WHY_SHOWN])
        hint = f"<div class='next'>next: {e(hints[cid])}</div>" if hints.get(cid) else ""
        if len(reasons) <= WHY_SHOWN:
            return f"<li>{head}{hint}</li>"
        rest = "".join(f"<li>{e(x)}</li>" for x in reasons[WHY_SHOWN:])
        return (f"<li><details><summary>{head}; +{len(reasons) - WHY_SHOWN} more</summary><ul>{rest}</ul></details>"
                f"{hint}</li>")

    return "<ul class='why'>" + "".join(one(*i) for i in items) + "</ul>"


def counts_html(rep: Report) -> str:
    counts: dict[str, int] = {}
    for r in rep.records:
        st = (r.get("verdict") or {}).get("status", UNJUDGED)
        counts[st] = counts.get(st, 0) + 1
    return (f"<p>{len(rep.records)} case(s): "
            + "".join(f"<span class='badge {html.escape(k)}'>{html.escape(k)} {n}</span>" for k, n in sorted(counts.items()))
            + "</p>")


def family_html(rep: Report) -> str:
    """One row per model family: its cases' verdicts, the mean delta of the headline metrics, and the
    family's aggregate (Stouffer) verdicts when the gate computed them."""
    e = html.escape
    fams: dict[str, list[CaseRecord]] = {}
    for r in rep.records:
        fams.setdefault(r["model"], []).append(r)
    aggs = {(a.scope, a.metric): a for a in rep.aggregates}
    rows = []
    for fam, recs in sorted(fams.items()):
        counts: dict[str, int] = {}
        for r in recs:
            st = (r.get("verdict") or {}).get("status", UNJUDGED)
            counts[st] = counts.get(st, 0) + 1
        chips = "".join(f"<span class='badge {e(k)}'>{e(k)} {n}</span>" for k, n in sorted(counts.items()))
        cells = []
        for m in HISTORY_METRICS:
            deltas = [c["delta"] for r in recs for c in (r.get("verdict") or {}).get("checks", [])
                      if judges_score(c, m) and isinstance(c.get("delta"), (int, float))]
            a = aggs.get((f"family {fam}", m))
            cls = (Status.REGRESSION if not a.passed else Status.PASS) if a is not None else UNJUDGED
            text = f"{sum(deltas) / len(deltas):+.4f}" if deltas else "-"
            title = a.line().strip() if a is not None else f"{len(deltas)} judged case(s); no family verdict (needs 2+)"
            cells.append(f'<td class="cell {cls}" title="{e(title)}">{e(text)}'
                         + (f"<small>MDE {a.mde:.3f}</small>" if a is not None else "") + "</td>")
        rows.append(f"<tr><th class='case'>{e(fam)}</th><td>{len(recs)}</td><td>{chips}</td>{''.join(cells)}</tr>")
    head = "".join(f"<th>{e(h)}</th>" for h in ["family", "cases", "verdicts", *(f"mean delta {m}" for m in HISTORY_METRICS)])
    return f"<table class='heat fam'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}td:nth-child(-n+2),th{text-align:left}
.regression{background:#fdecea}.improvement{background:#eafaf1}pre{background:#f6f8fa;padding:8px;font-size:12px}
img{max-width:100%;border:1px solid #ddd;margin:8px 0}h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table.heat td,table.heat th{text-align:center;min-width:52px}table.heat th.case{text-align:left;font-weight:600}
table.heat td small{display:block;font-size:10px;color:#555}
.cell.pass,.check.pass{background:#e8f5e9}.cell.regression,.check.regression{background:#e74c3c;color:#fff}
.cell.regression small{color:#fde}.cell.changed,.check.changed{background:#f39c12;color:#fff}
.cell.improvement,.check.improvement{background:#27ae60;color:#fff}.cell.incomparable,.check.incomparable{background:#d5d8dc}
.cell.no-baseline,.check.no-baseline{background:#eef2f3;color:#555}.cell.error,.check.error{background:#7b241c;color:#fff}
.cell.unjudged,.check.unjudged{background:#fafafa;color:#888}
.badge{border-radius:3px;padding:1px 6px;font-size:12px;color:#fff;background:#7f8c8d;margin-right:4px}
.badge.pass{background:#34495e}.badge.regression,.badge.error{background:#c0392b}.badge.changed{background:#d68910}
.badge.improvement{background:#1e8449}.legend span{padding:1px 6px;margin:0 3px;font-size:12px}
ul.why li{margin:4px 0}.next{font-size:12px;color:#555}ul.why ul{margin:2px 0}summary{cursor:pointer}.ok{color:#1e8449}"""


def to_html(rep: Report, pngs: dict[str, bytes]) -> str:
    e = html.escape
    rows = table_rows(rep.records, rep.baseline)
    head = "".join(f"<th>{e(h)}</th>" for h in header(rep.records))
    body = "".join(f'<tr class="{e(r[-1])}">' + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(rep.title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{e(rep.title)}</h1>", counts_html(rep),
             "<h2>Cases \u00d7 metrics (delta vs baseline, coloured by verdict)</h2>", heatmap_html(rep),
             "<h2>Why cases failed</h2>", why_html(rep), "<h2>Per family</h2>", family_html(rep),
             "<h2>Results (delta vs baseline)</h2>",
             f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>",
             f"<p class='legend runs'>{e(runs_legend(rep.records))}</p>"]
    crow = control_rows(rep.records)
    if crow:
        chead = "".join(f"<th>{e(h)}</th>" for h in CONTROL_HEADER)
        parts.append("<h2>Base model, controls and power (delta and MDE as the gate judged them)</h2>"
                     f"<p class='legend runs'>{e(controls_legend(rep.records))}</p><table class='controls'><thead><tr>{chead}</tr></thead><tbody>"
                     + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in crow) + "</tbody></table>")
    for name, alt in (("bars", "scores vs baseline"), ("history", "history per case")):
        if name in pngs:
            b64 = base64.b64encode(pngs[name]).decode()
            parts.append(f"<h2>{e(alt.capitalize())}</h2><img alt='{e(alt)}' src='data:image/png;base64,{b64}'>")
    if rep.aggregates:
        parts.append("<h2>Family and suite verdicts</h2><pre>" + e("\n".join(a.line() for a in rep.aggregates)) + "</pre>")
    trends = _trend_lines(rep)
    parts.append("<h2>Trends in the history</h2>" + ("<ul>" + "".join(f"<li>{e(t)}</li>" for t in trends) + "</ul>" if trends
                 else f"<p>{'No worsening shift found.' if rep.history_series else 'No history given.'}</p>"))
    parts.append("<h2>Verdict details</h2>" + "".join(
        f"<pre style='border-left:4px solid {STATUS_COLOUR.get(s, '#999')}'>{e(t)}</pre>" for s, t in _verdicts(rep)))
    parts.append("</body></html>")
    return "\n".join(parts)


def write(rep: Report, out_dir: Path) -> dict[str, Path]:
    """Write report.md (+ its PNGs) and report.html (self-contained) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = {"bars": bars_png(rep)}
    hist = history_png(rep)
    if hist is not None:
        pngs["history"] = hist
    images = {}
    for name, data in pngs.items():
        (out_dir / f"report-{name}.png").write_bytes(data)
        images[name] = f"report-{name}.png"
    paths = {"markdown": out_dir / "report.md", "html": out_dir / "report.html"}
    paths["markdown"].write_text(to_markdown(rep, images))
    paths["html"].write_text(to_html(rep, pngs))
    return paths
