"""Regression alerts: a JSON summary POSTed to a webhook (``--alert-webhook URL``).

The payload's ``text`` field is Slack-compatible (incoming webhooks render it as the message);
the other fields carry the same facts for machines: run id, profile, status, and per case the
failing checks with the numbers behind them and any trend shift found in the history.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from http.client import HTTPMessage
from typing import IO, Any, NotRequired, TypedDict

from .record import CaseRecord, Status
from .trend import Shift, ShiftJson

MAX_LINES = 40  # keep a chat message readable; the full list is in the payload's "cases"


class AlertTrend(ShiftJson):
    """A trend shift of a case in the payload: the shift as JSON and the metric it moved."""

    metric: str


class AlertCase(TypedDict):
    """One case in the payload: its outcome and verdict, the failing checks with the numbers
    behind them (``name``, ``value``, ``baseline``, ``limit``, ``detail``, ``basis``, ``ci``: the
    check's own values, None where it has none) and the worsening shifts found in the history."""

    case_id: str
    outcome: str | None
    status: str | None
    note: str
    failures: list[dict[str, object]]
    trend: list[AlertTrend]


class AlertPayload(TypedDict):
    """The JSON POSTed to the webhook: ``text`` for a chat, the same facts for machines."""

    text: str
    run_id: str
    profile: str
    status: str  # regression | trend | pass
    exitstatus: int
    cases: list[AlertCase]
    warnings: NotRequired[list[str]]  # the session's warnings, added by the plugin (plugin.finish.alert)


def payload(run_id: str, profile: str, records: list[CaseRecord], exitstatus: int,
            trends: dict[str, dict[str, list[Shift]]] | None = None, report_path: str | None = None) -> AlertPayload:
    cases: list[AlertCase] = []
    for r in records:
        verdict = r.get("verdict") or {}
        failing = [c for c in verdict.get("checks", []) if not c.get("passed", True)]
        cases.append({
            "case_id": r["case_id"], "outcome": r.get("outcome"), "status": verdict.get("status"),
            "note": verdict.get("note", ""),
            "failures": [{k: c.get(k) for k in ("name", "value", "baseline", "limit", "detail", "basis", "ci")} for c in failing],
            "trend": [{**s.to_json(), "metric": m} for m, shifts in (trends or {}).get(r["case_id"], {}).items() for s in shifts],
        })
    bad = [c for c in cases if c["status"] in (Status.REGRESSION, Status.CHANGED, Status.ERROR, Status.INCOMPARABLE)
           or c["outcome"] == "failed"]
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


def check_url(url: str) -> None:
    """Raise ValueError unless ``url`` is an absolute http(s) URL. The message never contains the
    URL (a webhook URL is a secret)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("--alert-webhook / MEDQA_ALERT_WEBHOOK: not an absolute http(s) URL "
                         f"(scheme {parts.scheme or 'missing'!r}); the value is not shown because webhook URLs are secrets")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: HTTPMessage,
                         newurl: str) -> urllib.request.Request | None:
        raise urllib.error.HTTPError(req.full_url, code, f"redirected ({code}); the alert was not delivered", headers, fp)


def post(url: str, body: Mapping[str, object], timeout: float = 10.0) -> int:
    """POST ``body`` as JSON; returns the HTTP status. Raises OSError when it is not delivered:
    network failure, an HTTP error, a redirect (urllib would re-send it as a GET and report the
    GET's 200), or no complete answer within ``timeout`` seconds in all (a server that drips one
    byte at a time resets a socket timeout forever)."""
    import threading

    check_url(url)
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(_NoRedirect)
    answered: dict[str, int] = {}  # "status": the HTTP status, once the answer is read
    failed: list[OSError] = []  # why it was not delivered

    def send() -> None:
        try:
            with opener.open(req, timeout=timeout) as resp:  # noqa: S310 - the user's own URL
                resp.read()
                answered["status"] = resp.status
        except urllib.error.HTTPError as exc:
            failed.append(OSError(f"webhook answered HTTP {exc.code}" + (f": {exc.msg}" if 300 <= exc.code < 400 else "")))
        except (OSError, ValueError) as exc:
            failed.append(OSError(f"webhook not reached: {type(exc).__name__}"))

    worker = threading.Thread(target=send, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise OSError(f"webhook gave no complete answer within {timeout:g} s; the alert may be lost")
    if failed:
        raise failed[0]
    return int(answered["status"])


def _fmt(v: Any) -> str:
    """A number to 4 decimals; anything else (an invariant's digest or settings) shortened."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:.4f}"
    text = str(v)
    return text if len(text) <= 60 else text[:57] + "..."
