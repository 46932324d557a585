"""Chaos (issue 12, "done means"): a cold ``pytest benchmarks/ -n 2`` of two tiny cases is killed
with SIGKILL (its whole process group: controller and xdist workers) at a random moment, then run
again to the end. Every rerun must end with the scores of an uninterrupted run, leave no
temporary build directory in the cache, add its history row (and the killed run none, without
losing an earlier one), and leave the baseline file byte for byte as it was.

Each of the ``MEDQA_CHAOS_KILLS`` rounds (default 3; the nightly job asks 20) starts from an empty
cache, so every kill lands in a cold build (training, generation, scoring or their writes);
history and baseline are shared by all rounds. The recipe is shortened with ``--set`` (the cases
then fail the gate as incomparable to baselines/tiny.json, which is beside the point: they still
end as records with scores). ``MEDQA_CHAOS_SEED`` fixes the kill moments.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from medqa_core.results.history import History

# slow by location (tests/conftest.py): minutes: the nightly CPU job runs it (MEDQA_CHAOS_KILLS=20)

REPO = Path(__file__).resolve().parents[2]
CASES = ("llama-wikidoc", "gemma-mental_health")
RECIPE = ["--set", "train.steps=20", "--set", "split.test_size=16"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDQA_") and k != "PYTEST_ADDOPTS"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONHASHSEED="0")
    return env


def _command(cache: Path, results: Path, history: Path, baseline: Path) -> list[str]:
    return [sys.executable, "-m", "pytest", "benchmarks/test_medqa.py", "-n", "2", "-p", "no:cacheprovider", "-q",
            "-k", " or ".join(CASES), "--cache-dir", str(cache), "--results-dir", str(results),
            "--history", str(history), "--baseline", str(baseline), *RECIPE]


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group: the kill takes the workers too


def _run_to_end(cmd: list[str], log: Path) -> float:
    t0 = time.monotonic()
    proc = _start(cmd, log)
    rc = proc.wait(timeout=1800)
    assert rc in (0, 1), f"exit {rc}:\n{log.read_text()[-3000:]}"  # 1: the cases fail the gate (shortened recipe)
    return time.monotonic() - t0


def _scores(results: Path) -> tuple[str, dict[str, dict]]:
    """(run id, case id -> the scores of its record) of the single run written under ``results``."""
    (run_dir,) = [d for d in results.iterdir() if d.is_dir()]
    out = {}
    for cid in CASES:
        rec = json.loads((run_dir / f"{cid}.json").read_text())
        assert rec["runs"], f"{cid}: no scores ({rec['verdict']})"
        out[cid] = {"metrics": rec["metrics"], "base_metrics": rec["base_metrics"],
                    "per_example": rec["runs"][0]["per_example"], "controls": rec["runs"][0]["controls"]}
    return run_dir.name, out


def _orphans(cache: Path) -> list[Path]:
    """Temporary build directories (``.<key[:12]>-*`` beside the entries) left in the cache."""
    return sorted(p for p in cache.glob("*/*/.*") if p.is_dir())


def test_sigkill_at_random_moments_then_rerun(tmp_path):
    kills = int(os.environ.get("MEDQA_CHAOS_KILLS", "3"))
    rng = random.Random(int(os.environ.get("MEDQA_CHAOS_SEED", str(int(time.time())))))
    baseline = tmp_path / "baseline.json"
    shutil.copyfile(REPO / "baselines" / "tiny.json", baseline)
    before = baseline.read_bytes()
    history = tmp_path / "history.sqlite"

    # the uninterrupted run: the scores every rerun must reproduce, and how long a cold run takes
    ref_results = tmp_path / "ref-results"
    cold = _run_to_end(_command(tmp_path / "ref-cache", ref_results, history, baseline), tmp_path / "ref.log")
    ref_id, reference = _scores(ref_results)
    stored = [ref_id]

    for i in range(kills):
        cache = tmp_path / f"cache-{i}"  # cold every round
        killed_results = tmp_path / f"killed-{i}"
        moment = rng.uniform(1.0, 0.95 * cold)
        proc = _start(_command(cache, killed_results, history, baseline), tmp_path / f"killed-{i}.log")
        try:
            proc.wait(timeout=moment)
            finished_first = True  # it ended before the kill: a run like any other
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            finished_first = False
        if finished_first:
            stored.append(_scores(killed_results)[0])

        rerun_results = tmp_path / f"rerun-{i}"
        _run_to_end(_command(cache, rerun_results, history, baseline), tmp_path / f"rerun-{i}.log")
        run_id, scores = _scores(rerun_results)
        stored.append(run_id)
        where = f"round {i}: killed at {moment:.1f} s of a {cold:.1f} s cold run"
        assert scores == reference, where
        assert not _orphans(cache), f"{where}: {_orphans(cache)}"
        assert baseline.read_bytes() == before, where
        for cid in CASES:  # every completed run has its row, in order; a killed run has none
            rows = History(history).case_rows(cid)
            assert [r[0] for r in rows] == stored, (where, cid, [r[0] for r in rows], stored)
