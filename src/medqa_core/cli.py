"""``medqa-bench`` command line: look at runs without re-running pytest.

    medqa-bench summary RUN_DIR [--baseline FILE]     Table-2-style table of a run's records
    medqa-bench compare RUN_A RUN_B [--profile NAME]  gate RUN_B's cases against RUN_A's
    medqa-bench params [--profile NAME]               LoRA trainable parameters per model (meta device)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import MedQAError


def _records(run_dir: str) -> list[dict]:
    from .report import load_records

    d = Path(run_dir)
    if not d.is_dir():
        raise MedQAError(f"{d}: not a run directory (look under .medqa-results/)")
    recs = load_records(sorted(d.glob("*.json")))
    if not recs:
        raise MedQAError(f"{d}: no case records (*.json) in this run directory")
    return recs


def cmd_summary(args: argparse.Namespace) -> int:
    from . import baselines
    from .report import plain_table

    base = baselines.load(Path(args.baseline)) if args.baseline else None
    print(plain_table(_records(args.run), base))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .baselines import compare
    from .specs import load_profile

    gate = load_profile(args.profile).gate
    old = {r["case_id"]: r for r in _records(args.run_a)}
    worst = 0
    for rec in _records(args.run_b):
        ref = old.get(rec["case_id"])
        as_baseline = None if ref is None else {
            "metrics": ref["metrics"], "resources": ref["resources"], "per_example": ref["per_example"]}
        verdict = compare(rec["case_id"], rec["metrics"], as_baseline, gate, rec["resources"], rec["per_example"])
        print(verdict.explain())
        worst = max(worst, verdict.status == "regression")
    return worst


def cmd_params(args: argparse.Namespace) -> int:
    from .params import lora_param_count
    from .specs import load_profile

    prof = load_profile(args.profile)
    print(f"{'model':10s} {'base params':>15s} {'LoRA trainable':>15s}  (r={prof.train.lora_r})")
    for name, spec in prof.models.items():
        c = lora_param_count(spec, prof.train)
        print(f"{name:10s} {c.total:>15,d} {c.trainable:>15,d}  targets={','.join(spec.target_modules)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="medqa-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("summary", help="print the summary table of a run directory")
    s.add_argument("run")
    s.add_argument("--baseline", help="baseline JSON for deltas (e.g. baselines/tiny.json)")
    s.set_defaults(fn=cmd_summary)
    c = sub.add_parser("compare", help="gate RUN_B against RUN_A case by case (exit 1 on a regression)")
    c.add_argument("run_a")
    c.add_argument("run_b")
    c.add_argument("--profile", default="tiny", help="profile whose [gate] tolerances apply (default tiny)")
    c.set_defaults(fn=cmd_compare)
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
