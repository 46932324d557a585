"""``medqa-bench`` command line: look at runs without re-running pytest.

    medqa-bench summary RUN [--baseline FILE]         Table-2-style table of a run's records
    medqa-bench compare RUN_A RUN_B [--profile NAME]  gate RUN_B's cases against RUN_A's
    medqa-bench report RUN [--out DIR]                markdown + self-contained HTML report with plots
    medqa-bench history [--profile NAME]              the runs stored in the history
    medqa-bench trend [--profile NAME]                worsening shifts (change points) per case and metric
    medqa-bench params [--profile NAME]               LoRA trainable parameters per model (meta device)
    medqa-bench merge RUN_DIR... --history PATH       import several machines' run directories as one run group
                                                      ([--group ID]; docs/multi-runner.md)

RUN is a run directory (.medqa-results/<run id>) or a run in the history: a run id, a unique
prefix of one, ``latest`` or ``latest~N``; a merged run group counts as one run. The history is --history, else $MEDQA_HISTORY, else
$MEDQA_CACHE_DIR/history.sqlite, else ./.medqa-cache/history.sqlite.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .errors import MedQAError


def _history_path(args: argparse.Namespace) -> Path:
    if getattr(args, "history", None):
        return Path(args.history)
    if os.environ.get("MEDQA_HISTORY"):
        return Path(os.environ["MEDQA_HISTORY"])
    return Path(os.environ.get("MEDQA_CACHE_DIR") or ".medqa-cache") / "history.sqlite"


def _history(args: argparse.Namespace, required: bool = True) -> Any:
    from .history import History

    path = _history_path(args)
    if not path.is_file():
        if required:
            raise MedQAError(f"{path}: no run history here (pytest writes it; or pass --history PATH)")
        return None
    return History(path)


def _records(ref: str, args: argparse.Namespace | None = None) -> list[dict]:
    """The case records of a run directory, or of a run in the history."""
    from .report import load_records

    d = Path(ref)
    if d.is_dir():
        recs = load_records(sorted(d.glob("*.json")))
        if not recs:
            raise MedQAError(f"{d}: no case records (*.json) in this run directory")
        return recs
    hist = _history(args, required=False) if args is not None else None
    if hist is None:
        raise MedQAError(f"{d}: not a run directory (look under .medqa-results/) and no history to look it up in")
    recs = hist.records(hist.resolve(ref))
    return sorted(recs, key=lambda r: (r["dataset"], r["model"]))


def cmd_summary(args: argparse.Namespace) -> int:
    from . import baselines
    from .report import plain_table

    base = baselines.load(Path(args.baseline)) if args.baseline else None
    print(plain_table(_records(args.run, args), base))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .baselines import case_entry
    from .gate import judge_case
    from .specs import load_profile

    gate = load_profile(args.profile).gate
    old = {r["case_id"]: r for r in _records(args.run_a, args)}
    # run A's records act as a baseline: the noise band comes from A's runs (record A with
    # --seeds K for a band of its own; with one run each the pooled spread over A's cases is used)
    cases = {cid: case_entry(_runs(r)) for cid, r in old.items()}
    worst = 0
    for rec in _records(args.run_b, args):
        verdict = judge_case(rec["case_id"], _runs(rec), cases.get(rec["case_id"]), cases, gate, rec.get("identity", {}))
        print(verdict.explain())
        worst = max(worst, int(verdict.failed))
    return worst


def _runs(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """A record's runs (a record from before per-run records counts as one run)."""
    runs = rec.get("runs") or [rec]
    return [{"seed": 0, "controls": {}, "invariants": {}, "margins": {}, "provenance": rec.get("provenance", {}),
             "identity": rec.get("identity", {}), "base_metrics": rec.get("base_metrics", {}),
             "resources": rec.get("resources", {}), **r} for r in runs]


def _profile_or_none(name: str | None, explicit: bool) -> Any:
    """The profile for tolerances/baseline. One the user named must load (its error is shown);
    one only taken from the records may be missing here (then: no baseline, default tolerances)."""
    from .specs import load_profile

    if not name:
        return None
    try:
        return load_profile(name)
    except MedQAError:
        if explicit:
            raise
        return None


def cmd_report(args: argparse.Namespace) -> int:
    from . import baselines
    from .htmlreport import HISTORY_METRICS, Report, write
    from .trend import case_trends

    recs = _records(args.run, args)
    profile_name = args.profile or recs[0].get("profile")
    profile = _profile_or_none(profile_name, explicit=bool(args.profile))
    if args.baseline:
        base = baselines.load(Path(args.baseline))
    elif profile is not None and profile.resolve(str(profile.baseline)).is_file():
        base = baselines.load(profile.resolve(str(profile.baseline)))
    else:
        base = None
    run_id = Path(args.run).name if Path(args.run).is_dir() else _history(args).resolve(args.run)
    rep = Report(title=f"medqa-bench report: profile {profile_name}, run {run_id}", records=recs, baseline=base, run_id=run_id)
    from .gate import aggregates
    from .specs import GateConfig

    # family / suite verdicts recomputed from the records' checks: one run or a merged group alike
    rep.aggregates = aggregates(recs, profile.gate if profile is not None else GateConfig())
    hist = _history(args, required=False)
    if hist is not None:
        ids = [r["case_id"] for r in recs]
        from .history import series_of

        rows = {c: hist.case_rows(c, profile_name) for c in ids}
        rep.history_series = {c: {m: series_of(rows[c], m) for m in HISTORY_METRICS} for c in ids}
        tols = profile.gate.metric_tolerance if profile is not None else {}
        slack = profile.gate.memory_slack_mib if profile is not None else 0.0
        rep.trends = case_trends(hist, ids, profile_name, tols, memory_slack_mib=slack)
    out = Path(args.out) if args.out else (Path(args.run) if Path(args.run).is_dir() else Path(f"medqa-report-{run_id}"))
    paths = write(rep, out)
    print(f"wrote {paths['markdown']} and {paths['html']}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    import time

    hist = _history(args)
    for r in hist.runs(args.profile):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created))
        print(f"#{r.seq:<4d} {r.run_id:26s} {when}  {r.profile:8s} {r.hardware_class or '-':20s} {(r.git_sha or '-')[:10]}")
    return 0


def cmd_trend(args: argparse.Namespace) -> int:
    from .trend import case_trends

    hist = _history(args)
    profile = _profile_or_none(args.profile, explicit=True)
    tols = profile.gate.metric_tolerance if profile is not None else {}
    slack = profile.gate.memory_slack_mib if profile is not None else 0.0
    found = case_trends(hist, hist.case_ids(args.profile), args.profile, tols, memory_slack_mib=slack)
    for cid in sorted(found):
        for metric, shifts in found[cid].items():
            for sh in shifts:
                print(f"{cid}: {sh.explain(metric)}")
    if not found:
        print(f"no worsening shift in {len(hist.runs(args.profile))} stored run(s) of profile {args.profile}")
    return 1 if found else 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .merge import merge

    path = Path(args.history)  # the history written to is always named: no guessing for a write
    res = merge([Path(d) for d in args.run_dirs], path, args.group)
    for rid in res.members:
        n = res.cases_added.get(rid)
        state = ("new run" if rid in res.runs_added else "already stored") if n is not None else "merged before"
        print(f"run {rid}: {state}, {n or 0} case(s) added")
    print(f"group {res.group_id} (profile {res.profile}): {len(res.members)} run(s), {res.total_added} case(s) "
          f"added to {path}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from .params import lora_param_count
    from .specs import load_profile

    prof = load_profile(args.profile)
    print(f"{'model':10s} {'base params':>15s} {'LoRA trainable':>15s}  (r={prof.train.lora_r})")
    for name, spec in prof.models.items():
        if spec.unavailable:
            print(f"{name:10s} {'-':>15s} {'-':>15s}  ({spec.unavailable})")
            continue
        c = lora_param_count(spec, prof.train)
        print(f"{name:10s} {c.total:>15,d} {c.trainable:>15,d}  targets={','.join(spec.target_modules)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="medqa-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("summary", help="print the summary table of a run directory")
    s.add_argument("run")
    s.add_argument("--baseline", help="baseline JSON for deltas (e.g. baselines/tiny.json)")
    s.add_argument("--history", help="history database for run references (see above)")
    s.set_defaults(fn=cmd_summary)
    c = sub.add_parser("compare", help="gate RUN_B against RUN_A case by case (exit 1 on a regression)")
    c.add_argument("run_a")
    c.add_argument("run_b")
    c.add_argument("--profile", default="tiny", help="profile whose [gate] tolerances apply (default tiny)")
    c.set_defaults(fn=cmd_compare)
    c.add_argument("--history", help="history database for run references (see above)")
    r = sub.add_parser("report", help="write report.md and a self-contained report.html with plots for a run")
    r.add_argument("run")
    r.add_argument("--baseline", help="baseline JSON (default: the run's profile baseline)")
    r.add_argument("--profile", help="profile for tolerances and baseline (default: the one in the records)")
    r.add_argument("--history", help="history database for history plots and trends (see above)")
    r.add_argument("--out", help="output directory (default: the run directory, or ./medqa-report-<run>)")
    r.set_defaults(fn=cmd_report)
    h = sub.add_parser("history", help="list the runs stored in the history")
    h.add_argument("--profile")
    h.add_argument("--history")
    h.set_defaults(fn=cmd_history)
    t = sub.add_parser("trend", help="worsening shifts (change points) per case and metric; exit 1 when any")
    t.add_argument("--profile", default="tiny")
    t.add_argument("--history")
    t.set_defaults(fn=cmd_trend)
    mg = sub.add_parser("merge", help="import run directories of several machines into one history as one run group "
                                      "(docs/multi-runner.md)")
    mg.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    mg.add_argument("--history", required=True, help="history database to merge into (created when missing)")
    mg.add_argument("--group", default=os.environ.get("MEDQA_RUN_GROUP") or None,
                    help="group id shared by the runs of one night (env MEDQA_RUN_GROUP; default derived from the "
                         "run directories' names)")
    mg.set_defaults(fn=cmd_merge)
    p = sub.add_parser("params", help="LoRA trainable parameters per model, counted on meta-device skeletons")
    p.add_argument("--profile", default="paper")
    p.set_defaults(fn=cmd_params)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except MedQAError as exc:
        print(f"medqa-bench: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
