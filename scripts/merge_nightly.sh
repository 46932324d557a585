#!/usr/bin/env bash
# The nightly GPU workflow's final job: one history, one report and one issue body for all families;
# or, for a `record = true` run, one baseline file per profile and hardware class from the jobs' recordings.
#
#   scripts/merge_nightly.sh ARTIFACTS_DIR HISTORY_PATH OUT_DIR
#   scripts/merge_nightly.sh --baselines ARTIFACTS_DIR OUT_DIR
#
# ARTIFACTS_DIR  the downloaded matrix artifacts; every directory below it named like a run id
#                (YYYYMMDD-HHMMSS-xxxxxx, as the pytest plugin names them) that holds *.json
#                records is one run to merge
# HISTORY_PATH   the shared SQLite history (created when missing; append-only)
# OUT_DIR        gets merge.log, report.md + report.html (+ PNGs), trend.txt, issue.md and status
#
# OUT_DIR/aggregates_failed is the number of family/suite verdicts that failed, recomputed over the
# merged records (a night can regress on them alone, every case passing).
#
# --baselines: every ARTIFACTS_DIR/*/recorded-baselines/NAME.json (the baseline files one job's
# --update-baselines wrote: baselines/paper-<hardware class>.json, baselines/nightly.json) is merged
# into OUT_DIR/NAME.json: the committed baselines/NAME.json (if any) with every case a job recorded,
# so jobs that each recorded other cases (one family, one case) make one file to commit.
# OUT_DIR/recorded.txt lists the cases per file. Exit 1 when there is no recording, a file is
# unreadable, or two jobs recorded the same case differently.
#
# OUT_DIR/status is one word: ok (every case and family/suite verdict passed), regressed (a case or
# a family/suite verdict failed, or a case ended in error), or error (nothing could be merged,
# or the report, trend or issue could not be written). Exit status: 0 unless the merge itself
# failed (then 1, status error, and the history is unchanged); the workflow decides what the
# status means for it. Group id: $MEDQA_RUN_GROUP, else gh-$GITHUB_RUN_ID in GitHub Actions,
# else medqa-bench merge's default (derived from the run directories' names).
# Python: $MEDQA_PYTHON, else the repository's .venv/bin/python, else python3. See docs/multi-runner.md.
set -u -o pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${MEDQA_PYTHON:-}
if [ -z "$py" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then py=$repo/.venv/bin/python; else py=python3; fi
fi

if [ "${1:-}" = "--baselines" ]; then
    if [ "$#" -ne 3 ]; then
        echo "usage: $0 --baselines ARTIFACTS_DIR OUT_DIR" >&2
        exit 64
    fi
    mkdir -p "$3" || exit 1
    exec "$py" - "$2" "$3" "$repo/baselines" <<'PY'
import json, sys
from pathlib import Path

art, out, committed_dir = (Path(a) for a in sys.argv[1:4])
found = sorted(art.glob("*/recorded-baselines/*.json"))
if not found:
    sys.exit(f"merge_nightly --baselines: no */recorded-baselines/*.json under {art}: nothing was recorded")
by_name: dict[str, list[Path]] = {}
for p in found:
    by_name.setdefault(p.name, []).append(p)
listing = []
for name, paths in sorted(by_name.items()):
    base_path = committed_dir / name
    try:
        merged = json.loads(base_path.read_text()) if base_path.is_file() else None
        recordings = [(p, json.loads(p.read_text())) for p in paths]
    except (OSError, ValueError) as exc:
        sys.exit(f"merge_nightly --baselines: {exc}")
    before = dict((merged or {}).get("cases") or {})
    if merged is None:  # a new file (a hardware class recorded for the first time): the first recording's frame
        merged = {k: v for k, v in recordings[0][1].items() if k != "cases"}
    new: dict[str, tuple[Path, object]] = {}
    sources = []
    for p, data in recordings:
        if not isinstance(data, dict) or not isinstance(data.get("cases"), dict):
            sys.exit(f"merge_nightly --baselines: {p}: not a baseline file (no 'cases' table)")
        for case, entry in data["cases"].items():
            if before.get(case) == entry:
                continue  # committed before this run: not this job's recording
            if case in new and new[case][1] != entry:
                sys.exit(f"merge_nightly --baselines: {case} recorded differently by {new[case][0]} and {p}")
            new[case] = (p, entry)
        if data.get("source") and data["source"] not in sources:
            sources.append(data["source"])
    merged["cases"] = {**before, **{c: e for c, (_, e) in new.items()}}
    merged["cases"] = dict(sorted(merged["cases"].items()))
    if sources:
        merged["source"] = "; ".join(sources)
    try:  # the project's own schema check, where medqa-bench is installed
        from medqa_core.baselines import validate
    except ImportError:
        validate = None
    if validate is not None:
        try:
            validate(merged, out / name)
        except Exception as exc:
            sys.exit(f"merge_nightly --baselines: the merged {name} is not a valid baseline file: {exc}")
    (out / name).write_text(json.dumps(merged, indent=1, sort_keys=True, allow_nan=False) + "\n")  # as baselines.write
    listing.append(f"{name}: {len(new)} case(s) recorded: {', '.join(sorted(new)) or '-'}")
(out / "recorded.txt").write_text("\n".join(listing) + "\n")
print("\n".join(listing))
PY
fi

if [ "$#" -ne 3 ]; then
    echo "usage: $0 ARTIFACTS_DIR HISTORY_PATH OUT_DIR" >&2
    echo "       $0 --baselines ARTIFACTS_DIR OUT_DIR" >&2
    exit 64
fi
art=$1
hist=$2
out=$3
mkdir -p "$out" || exit 1
bench() { "$py" -m medqa_core.cli "$@"; }

# The issue body when the night could not be assessed; status error.
give_up() {
    echo "merge_nightly: $1" >&2
    { echo "# medqa-bench nightly: error"; echo; echo "$1"; echo
      if [ -s "$out/merge.log" ]; then echo '```'; cat "$out/merge.log"; echo '```'; fi; } > "$out/issue.md"
    echo error > "$out/status"
}

if [ ! -d "$art" ]; then
    give_up "artifacts directory $art does not exist"
    exit 1
fi
dirs=()
while IFS= read -r d; do
    if compgen -G "$d/*.json" > /dev/null; then dirs+=("$d"); fi
done < <(find "$art" -type d -regextype posix-extended -regex '.*/[0-9]{8}-[0-9]{6}-[0-9a-f]{6}' | LC_ALL=C sort)
if [ "${#dirs[@]}" -eq 0 ]; then
    give_up "no run directory (<run id>/ holding *.json case records) under $art"
    exit 1
fi

group=${MEDQA_RUN_GROUP:-}
if [ -z "$group" ] && [ -n "${GITHUB_RUN_ID:-}" ]; then group="gh-$GITHUB_RUN_ID"; fi
group_args=()
if [ -n "$group" ]; then group_args=(--group "$group"); fi

if ! bench merge "${dirs[@]}" --history "$hist" "${group_args[@]}" > "$out/merge.log" 2>&1; then
    cat "$out/merge.log" >&2
    give_up "medqa-bench merge failed; the history is unchanged"
    exit 1
fi
cat "$out/merge.log"
line=$(grep '^group ' "$out/merge.log" | tail -1)
group=$(printf '%s\n' "$line" | sed -n 's/^group \([^ ]*\) (profile \([^)]*\)):.*/\1/p')
profile=$(printf '%s\n' "$line" | sed -n 's/^group \([^ ]*\) (profile \([^)]*\)):.*/\2/p')
if [ -z "$group" ] || [ -z "$profile" ]; then
    give_up "medqa-bench merge did not name the group it wrote"
    exit 0  # the merge itself succeeded
fi

failed=""
bench report "$group" --history "$hist" --out "$out" || failed="$failed report"
bench trend --history "$hist" --profile "$profile" > "$out/trend.txt" 2>&1
rc=$?
if [ "$rc" -gt 1 ]; then failed="$failed trend"; fi  # 1 = worsening shifts found, not a failure here
status=$("$py" -m medqa_core.results.merge issue --history "$hist" --group "$group" --out "$out") || failed="$failed issue"
if [ -n "$failed" ]; then
    if [ -s "$out/issue.md" ]; then
        { echo; echo "Could not write:$failed (see the job log)."; } >> "$out/issue.md"
        echo error > "$out/status"
    else
        give_up "group $group merged, but could not write:$failed"
    fi
else
    echo "$status" > "$out/status"
fi
# the family/suite verdicts that failed, as issue.md counts them ("N check(s), M failed (recomputed ...")
agg=$(sed -n 's/^[0-9][0-9]* check(s), \([0-9][0-9]*\) failed.*/\1/p' "$out/issue.md" 2>/dev/null | head -1)
echo "${agg:-0}" > "$out/aggregates_failed"
echo "merge_nightly: group $group, status $(cat "$out/status")"
exit 0
