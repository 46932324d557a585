"""``medqa-bench report``: a run as markdown and as one self-contained HTML page with plots.

Contents: the Table-2 layout (scores, training time, memory; deltas against the baseline and
each case's verdict), the numbers behind every verdict, a bar chart per metric (this run vs
baseline, per model x dataset), and, when a history store is given, each case's history lines
with the trend shifts found in it. The HTML embeds its PNGs (base64), so it can be mailed or
uploaded as a CI artifact as it is.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .metrics import METRICS
from .report import HEADER, _baseline_values, markdown_table, md_cell, md_fence, table_rows

HISTORY_METRICS = ("bert_f1", "use_f1")
STATUS_COLOUR = {"regression": "#c0392b", "improvement": "#1e8449", "pass": "#34495e", "no-baseline": "#7f8c8d"}


@dataclass
class Report:
    title: str
    records: list[dict[str, Any]]
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
        cur = [r.get("metrics", {}).get(m, np.nan) for r in recs]  # an error record has no scores
        base = [_baseline_values(base_cases.get(c)).get(m, np.nan) for c in cases]
        failed = [any(ch["name"] == m and not ch["passed"] for ch in (r.get("verdict") or {}).get("checks", [])) for r in recs]
        ax.bar(x - 0.2, base, 0.4, color="#b0bec5", label="baseline")
        ax.bar(x + 0.2, cur, 0.4, color=["#c0392b" if f else "#2e86c1" for f in failed], label="this run")
        ax.set_ylabel(m)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=8, ncol=2)
    axes[0].set_title(f"{rep.title}: per-metric scores vs baseline (red = regression)")
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
    out = [f"# {rep.title}", "", "Verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), "",
           "## Results (delta vs baseline)", "", markdown_table(rep.records, rep.baseline), ""]
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


CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}td:nth-child(-n+2),th{text-align:left}
.regression{background:#fdecea}.improvement{background:#eafaf1}pre{background:#f6f8fa;padding:8px;font-size:12px}
img{max-width:100%;border:1px solid #ddd;margin:8px 0}h1{font-size:22px}h2{font-size:17px;margin-top:28px}"""


def to_html(rep: Report, pngs: dict[str, bytes]) -> str:
    e = html.escape
    rows = table_rows(rep.records, rep.baseline)
    head = "".join(f"<th>{e(h)}</th>" for h in HEADER)
    body = "".join(f'<tr class="{e(r[-1])}">' + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(rep.title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{e(rep.title)}</h1>", "<h2>Results (delta vs baseline)</h2>",
             f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"]
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
