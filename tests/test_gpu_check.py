"""scripts/gpu_check.sh (issue 13, item 11) cannot run its numbers without a GPU; here its shell
part is syntax-checked and its Python part runs every section on the CPU at tiny sizes
(--dry-run): the 7B-shaped benchmark's two training paths (LoRA and NF4 QLoRA + AdamW8bit), the
paper-recipe case through pytest, and the tiny profile's collection."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from helpers import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "gpu_check.sh"


def test_shell_script_syntax():
    res = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert os.access(SCRIPT, os.X_OK)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine: the real check would start")
def test_without_a_gpu_it_says_so_in_one_line():
    res = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "--dry-run" in res.stderr


def test_dry_run_exercises_every_section(tmp_path):
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "rows.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MEDQA_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out), "--work", str(tmp_path / "w")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert not [r for r in rows if r["what"] == "FAILED"]
    by = {s: [r for r in rows if r["section"] == s] for s in ("tiny", "bench", "paper")}
    assert by["tiny"][0]["value"] == 4  # one wikidoc case per family collected
    speeds = [r for r in by["bench"] if r["what"].endswith("tokens/s")]
    assert any("LoRA + AdamW" in r["what"] for r in speeds) and any("NF4 QLoRA" in r["what"] for r in speeds)
    assert all(isinstance(r["value"], int) and r["value"] > 0 for r in speeds)
    case = by["paper"][0]
    assert case["value"] in ("no-baseline", "pass", "regression", "changed", "improvement"), case
    assert "device cpu" in case["note"]
    steps = next(r for r in by["paper"] if r["what"].startswith("training"))
    assert steps["value"] == 2  # the paper recipe with its steps cut, run through pytest
    assert "section  what" in res.stdout  # the table
