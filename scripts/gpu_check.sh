#!/usr/bin/env bash
# One GPU check, <= 10 minutes on one H100/H200 (issue 13, item 11):
#   1. the tiny profile through pytest on CUDA (one case per family),
#   2. a Mistral-7B-shaped bf16 LoRA vs NF4 QLoRA training benchmark (tokens/s, peak VRAM;
#      random weights, 4 and 8 layers measured, 32 extrapolated linearly and labelled so),
#   3. one paper-recipe case (sft, NF4, adamw_8bit, batch 8 x 2048) on a small real checkpoint,
# then prints one table. What each number means: docs/gpu.md.
#
#   scripts/gpu_check.sh                      # on a GPU machine
#   scripts/gpu_check.sh --dry-run            # every code path on the CPU at tiny sizes
#   scripts/gpu_check.sh --out gpu-check.json --checkpoint /models/smol   # see --help
#
# Python: $MEDQA_PYTHON, else the repository's .venv/bin/python, else python3. Offline by
# default (HF_HUB_OFFLINE=1): nothing here downloads.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${MEDQA_PYTHON:-}
if [ -z "$py" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then py=$repo/.venv/bin/python; else py=python3; fi
fi
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1}

dry=0
for a in "$@"; do
    if [ "$a" = "--dry-run" ]; then dry=1; fi
done
if [ "$dry" -eq 0 ]; then
    if ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L | grep -q '^GPU '; then
        echo "gpu_check: no CUDA device visible (nvidia-smi); run with --dry-run to check the code on a CPU" >&2
        exit 2
    fi
fi
# the whole check is bounded: 10 minutes, whatever a section does
exec timeout --kill-after=30 600 "$py" "$repo/scripts/gpu_check.py" "$@"
