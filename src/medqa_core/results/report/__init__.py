"""``medqa-bench report``: a run as markdown and as one self-contained HTML page with plots
(:mod:`.model` what it shows, :mod:`.plots` the pictures, :mod:`.markdown`, :mod:`.page` the HTML).

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

from .markdown import (
    to_markdown,
)
from .model import (
    CASE_CHECKS,
    CELL_CLASSES,
    HEAT_METRICS,
    HISTORY_METRICS,
    STATUS_COLOUR,
    UNJUDGED,
    Report,
    case_check_state,
    cell_state,
)
from .page import (
    CSS,
    WHY_SHOWN,
    counts_html,
    family_html,
    heatmap_html,
    to_html,
    why_html,
    write,
)
from .plots import (
    bars_png,
    history_png,
    sparkline_svg,
)

__all__ = [
    "CASE_CHECKS",
    "CELL_CLASSES",
    "CSS",
    "HEAT_METRICS",
    "HISTORY_METRICS",
    "Report",
    "STATUS_COLOUR",
    "UNJUDGED",
    "WHY_SHOWN",
    "bars_png",
    "case_check_state",
    "cell_state",
    "counts_html",
    "family_html",
    "heatmap_html",
    "history_png",
    "sparkline_svg",
    "to_html",
    "to_markdown",
    "why_html",
    "write",
]
