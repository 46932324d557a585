"""The report's pictures: bar charts per metric and history plots (matplotlib, as PNG), and
the inline SVG sparkline of a case's history."""
from __future__ import annotations

import io
from typing import Any

from ...metrics import METRICS
from ..record import judges_score
from ..summary import (
    _baseline_values,
    _row_values,
    runs_phrase,
)
from .model import HISTORY_METRICS, Report


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
