#!/usr/bin/env bash
# The nightly GPU workflow's final job: one history, one report and one issue body for all families.
#
#   scripts/merge_nightly.sh ARTIFACTS_DIR HISTORY_PATH OUT_DIR
#
# ARTIFACTS_DIR  the downloaded matrix artifacts; every directory below it named like a run id
#                (YYYYMMDD-HHMMSS-xxxxxx, as the pytest plugin names them) that holds *.json
#                records is one run to merge
# HISTORY_PATH   the shared SQLite history (created when missing; append-only)
# OUT_DIR        gets merge.log, report.md + report.html (+ PNGs), trend.txt, issue.md and status
#
# OUT_DIR/status is one word: ok (every case and family/suite verdict passed), regressed (a case or
# a family/suite verdict failed, or a case ended in error), or error (nothing could be merged,
# or the report, trend or issue could not be written). Exit status: 0 unless the merge itself
# failed (then 1, status error, and the history is unchanged); the workflow decides what the
# status means for it. Group id: $MEDQA_RUN_GROUP, else gh-$GITHUB_RUN_ID in GitHub Actions,
# else medqa-bench merge's default (derived from the run directories' names).
# Python: $MEDQA_PYTHON, else the repository's .venv/bin/python, else python3. See docs/multi-runner.md.
set -u -o pipefail

if [ "$#" -ne 3 ]; then
    echo "usage: $0 ARTIFACTS_DIR HISTORY_PATH OUT_DIR" >&2
    exit 64
fi
art=$1
hist=$2
out=$3
mkdir -p "$out" || exit 1
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${MEDQA_PYTHON:-}
if [ -z "$py" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then py=$repo/.venv/bin/python; else py=python3; fi
fi
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
echo "merge_nightly: group $group, status $(cat "$out/status")"
exit 0
