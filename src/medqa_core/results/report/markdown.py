"""The report as markdown (report.md)."""
from __future__ import annotations

from ..summary import (
    details_markdown,
    markdown_table,
    md_cell,
    md_fence,
)
from .model import Report, case_verdicts, trend_lines


def to_markdown(rep: Report, images: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for status, _ in case_verdicts(rep):
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
    trends = trend_lines(rep)
    out += ["## Trends in the history", ""] + ([f"- {md_cell(t)}" for t in trends] if trends else
                                                ["No worsening shift found." if rep.history_series else "No history given."]) + [""]
    out += ["## Verdict details", ""]
    for _, text in case_verdicts(rep):
        out += md_fence(text)
    return "\n".join(out) + "\n"
