"""The report as one self-contained HTML page (report.html) and :func:`write`, which writes
both formats and the PNGs."""
from __future__ import annotations

import base64
import html
from pathlib import Path

from ..record import CaseRecord, Status, judges_score
from ..summary import (
    CONTROL_HEADER,
    control_rows,
    controls_legend,
    failure_reasons,
    header,
    next_step,
    runs_legend,
    runs_phrase,
    table_rows,
)
from .markdown import to_markdown
from .model import (
    CASE_CHECKS,
    CELL_CLASSES,
    HEAT_METRICS,
    HISTORY_METRICS,
    STATUS_COLOUR,
    UNJUDGED,
    Report,
    case_check_state,
    case_verdicts,
    cell_state,
    trend_lines,
)
from .plots import bars_png, history_png, sparkline_svg


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
            deltas = [float(d) for r in recs for c in (r.get("verdict") or {}).get("checks", [])
                      if judges_score(c, m) and isinstance(d := c.get("delta"), (int, float))]
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
    trends = trend_lines(rep)
    parts.append("<h2>Trends in the history</h2>" + ("<ul>" + "".join(f"<li>{e(t)}</li>" for t in trends) + "</ul>" if trends
                 else f"<p>{'No worsening shift found.' if rep.history_series else 'No history given.'}</p>"))
    parts.append("<h2>Verdict details</h2>" + "".join(
        f"<pre style='border-left:4px solid {STATUS_COLOUR.get(s, '#999')}'>{e(t)}</pre>" for s, t in case_verdicts(rep)))
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
