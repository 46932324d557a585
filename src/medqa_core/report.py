"""Result records and the Table-2-style summary (plain text for the terminal, markdown for files)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .metrics import METRICS

#: ``degenerate``: share of the tuned answers that loop (metrics/degeneration.py); shown, not gated
COLUMNS = (*METRICS, "degenerate", "train_s", "mem_mib")


def load_records(paths: list[Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        try:
            rec = json.loads(Path(p).read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a case that crashed before writing its record has no row
        if not isinstance(rec, dict) or "case_id" not in rec:
            continue  # aggregates.json (family/suite verdicts) sits beside the case records
        rec["_path"] = str(Path(p))
        out.append(rec)
    return sorted(out, key=lambda r: (r["dataset"], r["model"]))


def _row_values(rec: dict[str, Any]) -> dict[str, float]:
    """The row's numbers; a case that ended in an error before scoring has none (shown as '-')."""
    vals = dict(rec.get("metrics") or {})
    res = rec.get("resources") or {}
    for col, key in (("train_s", "train_seconds"), ("mem_mib", "peak_mem_mib")):
        if key in res:
            vals[col] = res[key]
    return vals


def _baseline_values(case: dict[str, Any] | None) -> dict[str, float]:
    if not case:
        return {}
    vals = dict(case["metrics"])
    res = case.get("resources", {})
    if "train_seconds" in res:
        vals["train_s"] = res["train_seconds"]
    if "peak_mem_mib" in res:
        vals["mem_mib"] = res["peak_mem_mib"]
    return vals


def _cell(col: str, v: float | None, b: float | None) -> str:
    if v is None:
        return "-"
    if col in METRICS:
        s = f"{v:.4f}"
        return s + (f" ({v - b:+.4f})" if b is not None else "")
    if col == "degenerate":  # a share of answers: two decimals are all a test set of ~100 supports
        return f"{v:.2f}" + (f" ({v - b:+.2f})" if b is not None else "")
    s = f"{v:.1f}"
    return s + (f" (x{v / b:.2f})" if b else "")


def table_rows(records: list[dict[str, Any]], baseline: dict[str, Any] | None) -> list[list[str]]:
    cases = (baseline or {}).get("cases", {})
    rows = []
    for rec in records:
        vals = _row_values(rec)
        base = _baseline_values(cases.get(rec["case_id"]))
        rows.append([rec["dataset"], rec["model"], *(_cell(c, vals.get(c), base.get(c)) for c in COLUMNS),
                     rec.get("verdict", {}).get("status", "")])
    return rows


HEADER = ["dataset", "model", *COLUMNS, "verdict"]


def plain_table(records: list[dict[str, Any]], baseline: dict[str, Any] | None) -> str:
    rows = [HEADER, *table_rows(records, baseline)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(records: list[dict[str, Any]], baseline: dict[str, Any] | None) -> str:
    rows = table_rows(records, baseline)
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def md_cell(text: str) -> str:
    """A table cell that stays one cell and shows as text: no raw HTML, pipe or line break."""
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
            .replace("\r", " ").replace("\n", " "))


def md_fence(text: str) -> list[str]:
    """``text`` as a fenced block that nothing in it can close: the fence is longer than any
    backtick run inside (CommonMark)."""
    import re

    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence, text, fence]
