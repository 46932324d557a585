"""Result records and the Table-2-style summary (plain text for the terminal, markdown for files)."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeGuard

from ..metrics import METRICS
from ..metrics.registry import NLL, RESOURCE_KEYS, RESOURCES
from .record import (
    BaselineCase,
    BaselineFile,
    CaseRecord,
    CheckRecord,
    JsonObject,
    Status,
    check_fields,
    is_record,
    judges_score,
)

#: ``degenerate``: share of the tuned answers that loop (metrics/degeneration.py); gated like a
#: score, lower is better (metrics/registry.py)
COLUMNS = (*METRICS, "degenerate", *RESOURCES)


#: written into every run directory by the pytest plugin: which profile (name, or absolute path of
#: a profile file), baseline, history and cache the run used, so ``summary``/``report``/``history``/
#: ``trend`` find them from the run directory alone. TOML, not JSON: ``*.json`` there are case records.
RUN_INFO = "run.toml"


def write_run_info(run_dir: Path, info: Mapping[str, object]) -> Path:
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


def read_run_info(run_dir: Path) -> JsonObject:
    """The run's ``run.toml``, or {} when it has none (a run from before it was written) or it is unreadable.
    Free-form: whatever TOML the file holds (a user may edit it); readers check each value they use."""
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


# ---- one aggregation for every column: the mean over a case's runs (seeds) ---------------------

def _is_num(v: object) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _runs(rec: CaseRecord) -> list[Mapping[str, Any]]:
    """The case's runs (one per seed); a record without ``runs`` (an older or hand-made one) is its
    own single run."""
    runs: list[Mapping[str, Any]] = [r for r in (rec.get("runs") or []) if isinstance(r, dict)]
    return runs or [dict(rec)]


def _sources(run: Mapping[str, Any]) -> dict[str, dict[str, object]]:
    """One run's numbers per source: ``tuned`` (its metrics), ``base`` (the base model), each
    control by name (e.g. ``no_question``, ``shuffled``), and ``resources``."""
    controls = {name: (c.get("metrics") if isinstance(c, dict) and "metrics" in c else c) or {}
                for name, c in (run.get("controls") or {}).items()}
    out: dict[str, dict[str, object]] = {"tuned": dict(run.get("metrics") or {}),
                                         "base": {**(controls.pop("base", None) or {}), **(run.get("base_metrics") or {})}}
    out.update(controls)
    res = run.get("resources") or {}
    out["resources"] = {col: res[RESOURCE_KEYS[col]] for col in RESOURCES if RESOURCE_KEYS[col] in res}
    return out


def case_means(rec: CaseRecord) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]], int]:
    """``(means, counts, K)``: per source (tuned, base, each control, resources) and column, the
    mean over the case's K runs, and how many of the runs had that number. The summary tables and
    the HTML report read every column from here, so no column shows one seed beside another's mean."""
    runs = _runs(rec)
    sums: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for src, vals in _sources(run).items():
            for col, v in vals.items():
                if _is_num(v):
                    sums.setdefault(src, {}).setdefault(col, []).append(float(v))
    means = {src: {k: sum(v) / len(v) for k, v in cols.items()} for src, cols in sums.items()}
    counts = {src: {k: len(v) for k, v in cols.items()} for src, cols in sums.items()}
    k = len(runs) if rec.get("runs") else (1 if rec.get("metrics") else 0)
    # the record's own metrics are already the mean over its runs (session.case_record): a score the
    # runs do not carry comes from there; its base_metrics/controls/resources are the first run's only
    for m, v in (rec.get("metrics") or {}).items():
        if _is_num(v) and m not in means.get("tuned", {}):
            means.setdefault("tuned", {})[m] = float(v)
            counts.setdefault("tuned", {})[m] = k
    return means, counts, k


def runs_phrase(records: list[CaseRecord]) -> str:
    """'the mean over 3 runs (seeds 0, 1, 2)': how the tables aggregate a case's runs ('' = no values)."""
    ks = sorted({case_means(r)[2] for r in records} - {0})
    if not ks:
        return ""
    if len(ks) > 1:
        return f"the mean over {ks[0]}-{ks[-1]} runs (seeds; column runs)"
    seeds = {tuple(r.get("seeds") or [run.get("seed") for run in r.get("runs") or []]) for r in records if r.get("runs")}
    only = next(iter(seeds)) if len(seeds) == 1 else ()
    seed_text = f" (seed{'s' if len(only) > 1 else ''} {', '.join(map(str, only))})" if only and all(s is not None for s in only) else ""
    return f"the mean over {ks[0]} run{'s' if ks[0] != 1 else ''}{seed_text}"


def runs_legend(records: list[CaseRecord]) -> str:
    """The legend of the results table: every column is aggregated the same way over the runs."""
    how = runs_phrase(records)
    return (f"every value is {how} of its case: tuned scores, base, controls and resources alike; "
            "(delta) against the baseline's mean over its runs") if how else ""


def controls_legend(records: list[CaseRecord]) -> str:
    """The legend of the controls table."""
    how = runs_phrase(records)
    return (f"tuned, base, no_question and shuffled: each {how} of the case; delta and MDE as the gate "
            "judged them (the runs' mean against the baseline's)") if how else ""


def _row_values(rec: CaseRecord) -> dict[str, float]:
    """The row's numbers, each the mean over the case's runs; a case that ended in an error before
    scoring has none (shown as '-')."""
    means, _, _ = case_means(rec)
    return {**means.get("tuned", {}), **means.get("resources", {})}


def _baseline_values(case: BaselineCase | None) -> dict[str, float]:
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
    if col in METRICS or col == NLL:  # scores; answer_nll in nats per answer token
        s = f"{v:.4f}"
        return s + (f" ({v - b:+.4f})" if b is not None else "")
    if col == "degenerate":  # a share of answers: two decimals are all a test set of ~100 supports
        return f"{v:.2f}" + (f" ({v - b:+.2f})" if b is not None else "")
    s = f"{v:.1f}"
    return s + (f" (x{v / b:.2f})" if b else "")


def columns(records: list[CaseRecord]) -> tuple[str, ...]:
    """:data:`COLUMNS`, and ``answer_nll`` after ``degenerate`` when any run measured it
    (``[gate] answer_nll``): a table of runs without it is what it always was."""
    if not any(NLL in (r.get("metrics") or {}) for rec in records for r in (rec.get("runs") or [rec])):
        return COLUMNS
    i = COLUMNS.index("degenerate") + 1
    return (*COLUMNS[:i], NLL, *COLUMNS[i:])


def header(records: list[CaseRecord]) -> list[str]:
    """The table's header row for these records (:data:`HEADER`, with :func:`columns`)."""
    return ["dataset", "model", *columns(records), "runs", "verdict"]


def table_rows(records: list[CaseRecord], baseline: BaselineFile | None) -> list[list[str]]:
    cases = (baseline or {}).get("cases", {})
    cols = columns(records)
    rows = []
    for rec in records:
        vals = _row_values(rec)
        base = _baseline_values(cases.get(rec["case_id"]))
        k = case_means(rec)[2]
        rows.append([rec["dataset"], rec["model"], *(_cell(c, vals.get(c), base.get(c)) for c in cols),
                     str(k) if k else "-", (rec.get("verdict") or {}).get("status", "")])
    return rows


#: ``runs``: how many runs (seeds) each row's values are the mean of (``answer_nll`` joins the
#: columns of a run that measured it: :func:`header`)
HEADER = ["dataset", "model", *COLUMNS, "runs", "verdict"]


def plain_table(records: list[CaseRecord], baseline: BaselineFile | None) -> str:
    """The table, its legend (how values aggregate over the runs) as the last line."""
    head = header(records)
    rows = [head, *table_rows(records, baseline)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    legend = runs_legend(records)
    return "\n".join([*lines, *([legend] if legend else [])])


def markdown_table(records: list[CaseRecord], baseline: BaselineFile | None) -> str:
    rows = table_rows(records, baseline)
    head = header(records)
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(md_cell(c) for c in r) + " |" for r in rows]
    legend = runs_legend(records)
    return "\n".join([*out, *(["", f"_{md_cell(legend)}_"] if legend else [])])


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


def check_reason(c: Mapping[str, Any]) -> str:
    """One failing check of a verdict, in words: what failed and by how much."""
    name, kind = c.get("name", "?"), c.get("kind", "")
    f = check_fields(c)
    if kind == "control":
        control, metric = f.control or "", f.metric or ""
        lo = (c.get("ci") or [None])[0]
        return (f"does not beat {CONTROL_NAMES.get(control, control)} on {metric}"
                + (f" (seed{f.seed})" if f.seed is not None else "")
                + f": {_num(c.get('value'))} vs {_num(c.get('baseline'))}, margin {_num(c.get('delta'), '+.4f')}"
                + (f", one-sided bound {_num(lo, '+.4f')}" if lo is not None else ""))
    if kind == "noise":
        what = name
        if f.control is not None:  # a margin over a control
            what = f"margin over {CONTROL_NAMES.get(f.control, f.control)} on {f.metric}"
        delta, mde = c.get("delta"), c.get("mde")
        if c.get("direction") == "up":
            return f"{what} rose {_num(delta, '+.4f')} beyond the noise band"
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
    if v.get("status") == Status.CHANGED:  # the scores that fell within their band: a rise never hides a drop
        from ..gate import moved

        out += [f"also {m}" for m in moved(v.get("checks", [])) if "within band" in m]
    if not out and v.get("status") not in (None, Status.PASS, Status.IMPROVEMENT) and v.get("note"):
        out.append(str(v["note"]))
    return out


def next_step(rec: CaseRecord) -> str:
    """What to do about the case's verdict ('' when nothing): re-recording the baseline is offered
    only for ``changed`` (a rise, or an intended recipe change), never for a regression."""
    from ..gate import next_step as hint

    return hint((rec.get("verdict") or {}).get("status", ""))


def _noise_check(rec: CaseRecord, metric: str) -> CheckRecord | None:
    for c in (rec.get("verdict") or {}).get("checks", []):
        if judges_score(c, metric):
            return c
    return None


def control_rows(records: list[CaseRecord], metrics: tuple[str, ...] = CONTROL_METRICS) -> list[list[str]]:
    """Per case and metric: the tuned score, the base model's and the controls' scores, the delta
    the gate measured against the baseline and its MDE (the smallest drop it could have seen)."""
    rows = []
    for rec in records:
        means, counts, k = case_means(rec)
        for i, m in enumerate(metrics):
            if m not in means.get("tuned", {}):
                continue
            chk = _noise_check(rec, m) or {}
            rows.append([rec["case_id"] if i == 0 else "", m,
                         *(_mean_cell(means, counts, k, src, m) for src in CONTROL_SOURCES),
                         _num(chk.get("delta"), "+.4f"), _num(chk.get("mde"))])
    return rows


def _mean_cell(means: dict[str, dict[str, float]], counts: dict[str, dict[str, int]], k: int, src: str, m: str) -> str:
    """A source's mean; '(n/K runs)' after it when only n of the case's K runs had it."""
    v = means.get(src, {}).get(m)
    n = counts.get(src, {}).get(m, 0)
    return _num(v) + (f" ({n}/{k} runs)" if v is not None and n < k else "")


#: the score columns of the controls table, each the mean over the case's runs
CONTROL_SOURCES = ("tuned", "base", "no_question", "shuffled")
CONTROL_HEADER = ["case", "metric", *CONTROL_SOURCES, "delta", "MDE"]



def details_text(records: list[CaseRecord]) -> str:
    """The controls table and one 'why' line per case that did not pass (plain text)."""
    rows = [CONTROL_HEADER, *control_rows(records)]
    out = []
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(len(CONTROL_HEADER))]
        out.append(f"scores beside the base model and the controls ({controls_legend(records)}):")
        out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    why = [(rec["case_id"], (rec.get("verdict") or {}).get("status", "?"), failure_reasons(rec), next_step(rec))
           for rec in records]
    why = [w for w in why if w[2]]
    if why:
        out.append("why:")
        for cid, status, reasons, hint in why:
            out.append(f"  {cid}: {status}: " + "; ".join(reasons))
            if hint:
                out.append(f"    next: {hint}")
    return "\n".join(out)


def details_markdown(records: list[CaseRecord]) -> str:
    rows = control_rows(records)
    out = []
    if rows:
        out += [md_cell(controls_legend(records)), ""]
        out += ["| " + " | ".join(CONTROL_HEADER) + " |", "|" + "---|" * len(CONTROL_HEADER)]
        out += ["| " + " | ".join(md_cell(c) for c in r) + " |" for r in rows]
    why = [(rec["case_id"], (rec.get("verdict") or {}).get("status", "?"), failure_reasons(rec), next_step(rec))
           for rec in records]
    lines = [f"- **{md_cell(cid)}** {md_cell(status)}: " + md_cell("; ".join(rs))
             + (f" \u2014 next: {md_cell(hint)}" if hint else "") for cid, status, rs, hint in why if rs]
    if lines:
        out += ["", "Why:", "", *lines]
    return "\n".join(out)
