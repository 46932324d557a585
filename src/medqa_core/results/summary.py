"""Result records and the Table-2-style summary (plain text for the terminal, markdown for files)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..metrics import METRICS
from ..metrics.registry import RESOURCE_KEYS, RESOURCES
from .record import CaseRecord, is_record

#: ``degenerate``: share of the tuned answers that loop (metrics/degeneration.py); shown, not gated
COLUMNS = (*METRICS, "degenerate", *RESOURCES)


#: written into every run directory by the pytest plugin: which profile (name, or absolute path of
#: a profile file), baseline, history and cache the run used, so ``summary``/``report``/``history``/
#: ``trend`` find them from the run directory alone. TOML, not JSON: ``*.json`` there are case records.
RUN_INFO = "run.toml"


def write_run_info(run_dir: Path, info: dict[str, Any]) -> Path:
    """Write ``run.toml`` (string, number, bool and list-of-string values; None values are left out)."""
    lines = ["# medqa-bench: what this run used (read by `medqa-bench summary|report|history|trend`)"]
    for k, v in info.items():
        if v is None:
            continue
        if isinstance(v, bool):
            text = "true" if v else "false"
        elif isinstance(v, (int, float)):
            text = repr(v)
        elif isinstance(v, (list, tuple)):
            text = "[" + ", ".join(json.dumps(str(x), ensure_ascii=False) for x in v) + "]"
        else:
            text = json.dumps(str(v), ensure_ascii=False)  # a JSON string is a TOML basic string
        lines.append(f"{k} = {text}")
    path = Path(run_dir) / RUN_INFO
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """The run's ``run.toml``, or {} when it has none (a run from before it was written) or it is unreadable."""
    import tomllib

    try:
        return tomllib.loads((Path(run_dir) / RUN_INFO).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def load_records(paths: list[Path]) -> list[CaseRecord]:
    out = []
    for p in paths:
        try:
            rec = json.loads(Path(p).read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a case that crashed before writing its record has no row
        if not is_record(rec):
            continue  # aggregates.json (family/suite verdicts) sits beside the case records
        rec["_path"] = str(Path(p))
        out.append(rec)
    return sorted(out, key=lambda r: (r["dataset"], r["model"]))


def _row_values(rec: CaseRecord) -> dict[str, float]:
    """The row's numbers; a case that ended in an error before scoring has none (shown as '-')."""
    vals = dict(rec.get("metrics") or {})
    res = rec.get("resources") or {}
    for col in RESOURCES:
        if RESOURCE_KEYS[col] in res:
            vals[col] = res[RESOURCE_KEYS[col]]
    return vals


def _baseline_values(case: dict[str, Any] | None) -> dict[str, float]:
    if not case:
        return {}
    vals = dict(case["metrics"])
    res = case.get("resources", {})
    for col in RESOURCES:
        if RESOURCE_KEYS[col] in res:
            vals[col] = res[RESOURCE_KEYS[col]]
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


def table_rows(records: list[CaseRecord], baseline: dict[str, Any] | None) -> list[list[str]]:
    cases = (baseline or {}).get("cases", {})
    rows = []
    for rec in records:
        vals = _row_values(rec)
        base = _baseline_values(cases.get(rec["case_id"]))
        rows.append([rec["dataset"], rec["model"], *(_cell(c, vals.get(c), base.get(c)) for c in COLUMNS),
                     rec.get("verdict", {}).get("status", "")])
    return rows


HEADER = ["dataset", "model", *COLUMNS, "verdict"]


def plain_table(records: list[CaseRecord], baseline: dict[str, Any] | None) -> str:
    rows = [HEADER, *table_rows(records, baseline)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(records: list[CaseRecord], baseline: dict[str, Any] | None) -> str:
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


# ---- why a case failed, and what it was compared with -------------------------------------------

CONTROL_NAMES = {"base": "the base model", "no_question": "the no-question control (tuned model, question removed)",
                 "shuffled": "the shuffled-reference control"}
#: metrics shown beside their controls (the ones a profile usually requires to beat the base model)
CONTROL_METRICS = ("bert_f1", "use_f1")


def _num(v: Any, fmt: str = ".4f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def check_reason(c: dict[str, Any]) -> str:
    """One failing check of a verdict, in words: what failed and by how much."""
    name, kind = c.get("name", "?"), c.get("kind", "")
    if kind == "control":
        control, _, metric = name.partition("beats_")[2].partition(":")
        metric, _, seed = metric.partition("@")
        lo = (c.get("ci") or [None])[0]
        return (f"does not beat {CONTROL_NAMES.get(control, control)} on {metric}"
                + (f" ({seed})" if seed else "")
                + f": {_num(c.get('value'))} vs {_num(c.get('baseline'))}, margin {_num(c.get('delta'), '+.4f')}"
                + (f", one-sided bound {_num(lo, '+.4f')}" if lo is not None else ""))
    if kind == "noise":
        what = name
        if name.startswith("margin:"):
            _, control, metric = name.split(":", 2)
            what = f"margin over {CONTROL_NAMES.get(control, control)} on {metric}"
        delta, mde = c.get("delta"), c.get("mde")
        if c.get("direction") == "up":
            return (f"{what} rose {_num(delta, '+.4f')} beyond the noise band (changed: re-record the baseline if "
                    f"intended)")
        return (f"{what} dropped {_num(delta, '+.4f')} ({_num(c.get('value'))} vs baseline {_num(c.get('baseline'))})"
                + (f", beyond the noise band; MDE {_num(mde)}" if mde is not None else ""))
    if kind == "invariant":
        return f"{name}: {str(c.get('value'))[:60]} vs baseline {str(c.get('baseline'))[:60]} (must be identical)"
    if kind in ("time", "memory"):
        return f"{name} {_num(c.get('value'), '.3g')} over its limit {_num(c.get('limit'), '.3g')} (baseline {_num(c.get('baseline'), '.3g')})"
    return f"{name}: {c.get('detail', '')}".strip()


def failure_reasons(rec: CaseRecord) -> list[str]:
    """Why a case did not pass, from its verdict: one phrase per failing check (controls first), or
    the verdict's note (error, incomparable); [] for a passing case."""
    v = rec.get("verdict") or {}
    bad = [c for c in v.get("checks", []) if not c.get("passed", True)]
    order = {"control": 0, "noise": 1, "invariant": 2, "time": 3, "memory": 3}
    out = [check_reason(c) for c in sorted(bad, key=lambda c: order.get(c.get("kind", ""), 4))]
    if not out and v.get("status") not in (None, "pass", "improvement") and v.get("note"):
        out.append(str(v["note"]))
    return out


def _noise_check(rec: CaseRecord, metric: str) -> dict[str, Any] | None:
    for c in (rec.get("verdict") or {}).get("checks", []):
        if c.get("kind") == "noise" and c.get("name") == metric:
            return c
    return None


def control_rows(records: list[CaseRecord], metrics: tuple[str, ...] = CONTROL_METRICS) -> list[list[str]]:
    """Per case and metric: the tuned score, the base model's and the controls' scores, the delta
    the gate measured against the baseline and its MDE (the smallest drop it could have seen)."""
    rows = []
    for rec in records:
        controls = {name: (c.get("metrics") if isinstance(c, dict) and "metrics" in c else c)
                    for name, c in ((rec.get("runs") or [{}])[0].get("controls") or rec.get("controls") or {}).items()}
        for i, m in enumerate(metrics):
            if m not in (rec.get("metrics") or {}):
                continue
            chk = _noise_check(rec, m) or {}
            base = (rec.get("base_metrics") or {}).get(m, (controls.get("base") or {}).get(m))
            rows.append([rec["case_id"] if i == 0 else "", m, _num(rec["metrics"][m]), _num(base),
                         _num((controls.get("no_question") or {}).get(m)), _num((controls.get("shuffled") or {}).get(m)),
                         _num(chk.get("delta"), "+.4f"), _num(chk.get("mde"))])
    return rows


CONTROL_HEADER = ["case", "metric", "tuned", "base", "no_question", "shuffled", "delta", "MDE"]


def details_text(records: list[CaseRecord]) -> str:
    """The controls table and one 'why' line per case that did not pass (plain text)."""
    rows = [CONTROL_HEADER, *control_rows(records)]
    out = []
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(len(CONTROL_HEADER))]
        out.append("scores beside the base model and the controls; delta and MDE as the gate judged them:")
        out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    why = [(rec["case_id"], (rec.get("verdict") or {}).get("status", "?"), failure_reasons(rec)) for rec in records]
    why = [w for w in why if w[2]]
    if why:
        out.append("why:")
        out += [f"  {cid}: {status}: " + "; ".join(reasons) for cid, status, reasons in why]
    return "\n".join(out)


def details_markdown(records: list[CaseRecord]) -> str:
    rows = control_rows(records)
    out = []
    if rows:
        out += ["| " + " | ".join(CONTROL_HEADER) + " |", "|" + "---|" * len(CONTROL_HEADER)]
        out += ["| " + " | ".join(md_cell(c) for c in r) + " |" for r in rows]
    why = [(rec["case_id"], (rec.get("verdict") or {}).get("status", "?"), failure_reasons(rec)) for rec in records]
    lines = [f"- **{md_cell(cid)}** {md_cell(status)}: " + md_cell("; ".join(rs)) for cid, status, rs in why if rs]
    if lines:
        out += ["", "Why:", "", *lines]
    return "\n".join(out)
