"""docs/own-data.md, end to end: a CSV with the user's own column names in the user's folder,
``medqa-bench init`` with the shipped tiny llama base as a local model, a recorded baseline, a
rerun that passes, a planted drop (fewer training steps) that fails, and the report that shows
it. Every file lives under tmp_path; the repository's baselines are checked unchanged.

Slow (a few minutes on a busy 2-core machine: two seeded training runs for the baseline, one
for the plant): ``pytest tests/slow/test_own_data_walk.py -m slow``.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shlex
import subprocess
from pathlib import Path

from helpers import REPO_ROOT

from medqa_core.cli import main

CONDITIONS = ["asthma", "migraine", "eczema", "gout", "anemia", "insomnia", "acne", "sinusitis", "psoriasis", "vertigo",
              "bronchitis", "gastritis", "tonsillitis", "shingles", "rosacea", "sciatica"]
CARE = ["rest and fluids", "an inhaler", "a cool compress", "a low-purine diet", "iron tablets",
        "a regular sleep schedule", "a gentle cleanser", "saline rinses"]
FRAMES = ["What helps with {c}?", "How is {c} treated?", "I think I have {c}. What should I do?", "What causes {c} in adults?"]


def write_clinic_csv(path: Path) -> int:
    """A clinic's export: its own column names (with spaces), an id and a tag column the benchmark ignores."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ticket", "Patient Message", "Clinician Reply", "tags"])
        for i, c in enumerate(CONDITIONS):
            for j, frame in enumerate(FRAMES):
                reply = f"For {c}, start with {CARE[(i + j) % len(CARE)]}. See a doctor if the {c} lasts more than two weeks."
                w.writerow([n, frame.format(c=c), reply, "demo"])
                n += 1
    return n


def _digest(paths: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_own_data_walk(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the user's repository: init writes the profile here
    data = tmp_path / "clinic data" / "clinic export.csv"
    write_clinic_csv(data)
    work = tmp_path / "work"
    opts = ["--cache-dir", str(work / "cache"), "--results-dir", str(work / "results"), "--history",
            str(work / "history.sqlite"), "-p", "no:cacheprovider", "-q"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDQA_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    baselines_before = _digest(sorted((REPO_ROOT / "baselines").glob("*.json")))

    # 1. init: the user's columns, the shipped tiny llama base as a local model directory; a short
    #    recipe (40 steps, 2 recorded seeds; at 30 steps the tuned model
    #    does not yet beat its base model and recording refuses) keeps the walk to minutes
    assert main(["init", str(data), "--question", "Patient Message", "--answer", "Clinician Reply",
                 "--model", str(REPO_ROOT / "fixtures" / "models" / "llama"), "--name", "clinic",
                 "--set", "train.steps=40", "--set", "gate.baseline_seeds=2",
                 "--allow-misfit"]) == 0  # its own clinic words, not the fixtures' vocabulary
    out = capsys.readouterr().out
    profile = tmp_path / "clinic.toml"
    baseline = tmp_path / "baselines" / "clinic.json"
    assert f"wrote {profile}" in out
    cmds = [shlex.split(ln.strip()) for ln in out.splitlines() if " -m pytest " in ln]
    assert len(cmds) == 2 and "--update-baselines" in cmds[0] and "--update-baselines" not in cmds[1]
    assert cmds[0][cmds[0].index("--profile") + 1] == "clinic.toml"  # relative to the repository
    record_cmd, gate_cmd = cmds

    def pytest_run(cmd: list[str], *extra: str) -> tuple[int, Path, dict]:
        before = set((work / "results").glob("*")) if (work / "results").is_dir() else set()
        proc = subprocess.run([*cmd, *opts, *extra], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
        new = sorted(set((work / "results").glob("*")) - before)
        assert len(new) == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
        rec = json.loads((new[0] / "llama-clinic.json").read_text())
        return proc.returncode, new[0], rec

    # 2. record the baseline next to the data
    rc, _, rec = pytest_run(record_cmd)
    assert rc == 0, rec["verdict"]["explain"]
    assert "llama-clinic" in json.loads(baseline.read_text())["cases"]
    assert rec["data_source"] == {"kind": "file", "path": str(data), "via": "profile"}
    assert "data_source" not in rec["identity"]

    # 3. an unchanged rerun passes (served from the cache)
    rc, run_dir, rec = pytest_run(gate_cmd)
    assert rc == 0 and rec["verdict"]["status"] == "pass", rec["verdict"]["explain"]

    # 4. a planted drop: the same recipe with 3 training steps instead of 40 fails
    rc, run_dir, rec = pytest_run(gate_cmd, "--set", "train.steps=3")
    assert rc == 1
    status = rec["verdict"]["status"]
    assert status in ("regression", "changed"), rec["verdict"]["explain"]
    assert "train_steps: 3 vs baseline 40" in rec["verdict"]["explain"]

    # 5. the commands find profile, baseline and history from the run directory alone
    assert main(["summary", str(run_dir)]) == 0
    out = capsys.readouterr().out
    why = [ln for ln in out.splitlines() if ln.strip().startswith("llama-clinic:")]
    assert len(why) == 1 and f"{status}:" in why[0] and "train_steps: 3 vs baseline 40" in why[0]
    assert main(["report", str(run_dir)]) == 0
    html = (run_dir / "report.html").read_text()
    assert "medqa-bench report: profile clinic" in html
    assert 'data-check="invariants"' in html and "train_steps: 3 vs baseline 40" in html
    assert "http://" not in html and "https://" not in html  # self-contained: nothing to fetch
    assert html.count('data-case="llama-clinic"') >= 8  # its row of the heatmap
    assert main(["history", str(run_dir)]) == 0
    assert capsys.readouterr().out.count("clinic") == 3  # record, rerun, plant
    assert main(["trend", str(run_dir)]) == 0  # three runs are too few for a change point
    assert "no worsening shift in 3 stored run(s) of profile clinic" in capsys.readouterr().out

    # no step touched the repository's baselines; every run lives under tmp_path
    assert _digest(sorted((REPO_ROOT / "baselines").glob("*.json"))) == baselines_before
    assert not any((REPO_ROOT / ".medqa-results" / d.name).exists() for d in (work / "results").iterdir())
