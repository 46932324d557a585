"""Regression alerts: a JSON summary POSTed to a webhook (``--alert-webhook URL``).

The payload's ``text`` field is Slack-compatible (incoming webhooks render it as the message);
the other fields carry the same facts for machines: run id, profile, status, and per case the
failing checks with the numbers behind them and any trend shift found in the history.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

MAX_LINES = 40  # keep a chat message readable; the full list is in the payload's "cases"


def payload(run_id: str, profile: str, records: list[dict[str, Any]], exitstatus: int,
            trends: dict[str, dict[str, list[Any]]] | None = None, report_path: str | None = None) -> dict[str, Any]:
    cases = []
    for r in records:
        verdict = r.get("verdict") or {}
        failing = [c for c in verdict.get("checks", []) if not c.get("passed", True)]
        cases.append({
            "case_id": r["case_id"], "outcome": r.get("outcome"), "status": verdict.get("status"),
            "note": verdict.get("note", ""),
            "failures": [{k: c.get(k) for k in ("name", "value", "baseline", "limit", "detail", "basis", "ci")} for c in failing],
            "trend": [s.to_json() | {"metric": m} for m, shifts in (trends or {}).get(r["case_id"], {}).items() for s in shifts],
        })
    bad = [c for c in cases if c["status"] in ("regression", "changed", "error", "incomparable") or c["outcome"] == "failed"]
    drifting = [c for c in cases if c["trend"]]
    status = "regression" if bad or exitstatus not in (0, 5) else ("trend" if drifting else "pass")
    head = f"medqa-bench {profile} run {run_id}: "
    if status == "regression":
        head += f"{len(bad)} of {len(records)} case(s) regressed or failed (pytest exit {exitstatus})"
    elif status == "trend":
        head += f"all {len(records)} case(s) pass, but {len(drifting)} show a worsening trend"
    else:
        head += f"all {len(records)} case(s) pass"
    lines = [head]
    for c in cases:
        for f in c["failures"]:
            limit = f" (limit {_fmt(f.get('limit'))})" if f.get("limit") is not None else ""
            lines.append(f"- {c['case_id']} {f['name']}: {_fmt(f.get('value'))} vs baseline {_fmt(f.get('baseline'))}"
                         f"{limit} {f.get('detail') or ''}".rstrip())
        if c in bad and not c["failures"]:
            lines.append(f"- {c['case_id']}: {c['status'] or 'failed'}" + (f" ({c['note']})" if c["note"] else " (see the test log)"))
        for t in c["trend"]:
            lines.append(f"- {c['case_id']} {t['metric']}: {t['kind']} {t['delta']:+.4f} "
                         f"({t['before']:.4f} -> {t['after']:.4f}) since run {t['run_id'] or t['start']}")
    if len(lines) > MAX_LINES:
        lines = lines[:MAX_LINES] + [f"... and {len(lines) - MAX_LINES} more line(s)"]
    if report_path:
        lines.append(f"report: {report_path}")
    return {"text": "\n".join(lines), "run_id": run_id, "profile": profile, "status": status,
            "exitstatus": exitstatus, "cases": cases}


def post(url: str, body: dict[str, Any], timeout: float = 10.0) -> int:
    """POST ``body`` as JSON; returns the HTTP status. Raises OSError on network failure."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--alert-webhook: {url!r} is not an http(s) URL")
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - the user's own URL
            return resp.status
    except urllib.error.HTTPError as exc:
        raise OSError(f"webhook answered HTTP {exc.code}") from exc


def _fmt(v: Any) -> str:
    """A number to 4 decimals; anything else (an invariant's digest or settings) shortened."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:.4f}"
    text = str(v)
    return text if len(text) <= 60 else text[:57] + "..."
