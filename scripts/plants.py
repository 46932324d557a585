"""Run every planted regression (benchmarks/plants.py) with the cache protocol of the gate docs.

For each plant: the case on a WARM cache (the clean code's entries are there; a plant must not be
served from them), then on a COLD cache (an empty one: what the plant builds is stored under its
own keys), then the CLEAN code again on that cache (it must reproduce the fresh clean run
exactly, never reading what the plant stored). Prints a markdown table and writes JSON.

    MEDQA_THREADS=1 python scripts/plants.py --case llama-wikidoc --work /tmp/plants \\
        [--only steps_div4 lora_r4] [--skip-cold] --out docs/plants.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.plants import PLANTS, judge, run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="llama-wikidoc")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--warm-cache", type=Path, default=None, help="cache holding the clean run (default: built here)")
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    warm = (args.warm_cache or work / "warm-cache").resolve()
    clean = run(None, work / "clean", args.case, warm)
    ref = clean["record"]["metrics"]
    print(f"clean {args.case}: {clean['record']['verdict']['status']} (exit {clean['exit']})", flush=True)
    rows = []
    for plant in PLANTS:
        if args.only and plant.name not in args.only:
            continue
        row = {"plant": plant.name, "what": plant.what}
        res = run(plant, work / plant.name, args.case, warm)
        out = judge(plant, res)
        row["warm"] = {"caught": out.caught, "status": out.status, "failing": out.failing,
                       "served_from_cache": [k for k, v in res["cached"].items() if v], "explain": out.explain}
        if not args.skip_cold:
            cold = work / plant.name / "cold-cache"
            shutil.rmtree(cold, ignore_errors=True)
            res_c = run(plant, work / plant.name, args.case, cold)
            out_c = judge(plant, res_c)
            after = run(None, work / plant.name / "clean-after", args.case, cold)
            row["cold"] = {"caught": out_c.caught, "status": out_c.status, "failing": out_c.failing}
            row["clean_after_identical"] = after["record"]["metrics"] == ref and after["exit"] == clean["exit"]
            row["clean_after_cached"] = [k for k, v in after["cached"].items() if v]
        rows.append(row)
        print(f"{plant.name}: warm {'CAUGHT' if out.caught else 'MISSED'} ({out.status}; {', '.join(out.failing[:4])})"
              + (f"; cold {'CAUGHT' if row['cold']['caught'] else 'MISSED'}; clean after identical: "
                 f"{row['clean_after_identical']}" if "cold" in row else ""), flush=True)
    print("\n| plant | caught (warm) | caught (cold) | failing checks | clean rerun identical |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['warm']['caught']} | {r.get('cold', {}).get('caught', '-')} | "
              f"{', '.join(r['warm']['failing'][:5])} | {r.get('clean_after_identical', '-')} |")
    if args.out:
        args.out.write_text(json.dumps({"case": args.case, "clean": clean["record"]["verdict"]["status"],
                                        "plants": rows}, indent=1))
    return 0 if all(r["warm"]["caught"] and r.get("cold", {"caught": True})["caught"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
