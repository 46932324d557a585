#!/usr/bin/env bash
# One GPU check that fits a single <= 10-minute GPU command (issue 25; docs/gpu.md):
#   install from constraints/gpu.txt (timed; --skip-install when installed), a preflight (CUDA,
#   bitsandbytes' CUDA kernels, free disk, the small real model) that stops at the first failure,
#   then three sections, each a subprocess under `timeout` with its share of --budget (default
#   480 s): a Mistral-7B-shaped bf16 LoRA vs NF4 QLoRA benchmark, the tiny matrix on CUDA in fp32
#   with per-case deltas against baselines/tiny.json, one paper-recipe case on SmolLM2-135M.
# Every row is appended to OUT/gpu_check.jsonl as soon as it is measured; logs in OUT/logs/,
# scratch in OUT/work/.
#
#   scripts/gpu_check.sh --skip-install --out "$OUT"     # on a GPU machine, packages installed
#   scripts/gpu_check.sh --dry-run --budget 60 --out DIR  # every path on the CPU at tiny sizes
#   scripts/gpu_check.sh --help                           # every option
#
# The whole command is bounded by `timeout` at --limit seconds (default 600). Python:
# $MEDQA_PYTHON, else the repository's .venv/bin/python, else python3. Offline by default
# (HF_HUB_OFFLINE=1): nothing here downloads but the install.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${MEDQA_PYTHON:-}
if [ -z "$py" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then py=$repo/.venv/bin/python; else py=python3; fi
fi
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1} PYTHONUNBUFFERED=1

dry=0
help=0
limit=600
prev=""
for a in "$@"; do
    case "$a" in
        --dry-run) dry=1 ;;
        -h|--help) help=1 ;;
        --limit=*) limit=${a#--limit=} ;;
    esac
    if [ "$prev" = "--limit" ]; then limit=$a; fi
    prev=$a
done
if [ "$dry" -eq 0 ] && [ "$help" -eq 0 ]; then
    # before the install: a CUDA lock file is no use on a machine without an NVIDIA driver
    if ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L 2> /dev/null | grep -q '^GPU '; then
        echo "gpu_check: no CUDA device visible (nvidia-smi); run with --dry-run to check the code on a CPU" >&2
        exit 2
    fi
fi
# the whole check is bounded, whatever a section or the install does
exec timeout --kill-after=15 "${limit%.*}" "$py" "$repo/scripts/gpu_check.py" "$@"
