"""One model's LoRA training across several processes (GPUs), launched with torchrun.

With ``[train] num_processes = N`` (N > 1) the adapter stage of a case runs as
``python -m torch.distributed.run --standalone --nproc_per_node N -m medqa_core.train.launch JOB``.
The job file carries what training needs, as the launching process resolved it: the training
rows, the model spec (revision resolved), the recipe (``--set`` overrides and the run seed
applied) and the base checkpoint's path. No process re-reads the profile or re-splits the data.
Every process loads the cached base model onto its own device
(``cuda:<local rank>``; on CPU the processes share the cores, gloo backend) and runs the same
trl ``SFTTrainer`` recipe, which goes data-parallel (DDP via accelerate) by itself. The
per-device batch is ``batch_size / N``, so the global batch and the number of optimiser steps
stay those of the profile. Process 0 saves the adapter and the training stats; the pytest
process that launched it stores them in the cache like any other adapter. Use it with pytest
run without ``-n`` (xdist pins each worker to one GPU). torchrun and its workers run in their own
process group, killed after ``MEDQA_TORCHRUN_TIMEOUT`` seconds (default 12 h): the case then
ends in error with the log tail instead of hanging.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..errors import TrainingError

LOG_TAIL = 25
#: seconds torchrun may take before it and its workers are killed (env MEDQA_TORCHRUN_TIMEOUT):
#: a hung rendezvous or NCCL collective then fails the case with its log tail instead of holding
#: the GPUs until the CI job's own timeout kills everything without a record. The default covers
#: the slowest paper case on two T4s (Table 1: 438 min of training) with room to spare.
DEFAULT_TIMEOUT_S = 12 * 3600
#: seconds between SIGTERM and SIGKILL for the process group
KILL_GRACE_S = 30


def torchrun_timeout() -> float:
    raw = os.environ.get("MEDQA_TORCHRUN_TIMEOUT", "").strip()
    if not raw:
        return float(DEFAULT_TIMEOUT_S)
    try:
        value = float(raw)
    except ValueError:
        raise TrainingError(f"MEDQA_TORCHRUN_TIMEOUT={raw!r}: expected seconds (a number > 0)") from None
    if value <= 0:
        raise TrainingError(f"MEDQA_TORCHRUN_TIMEOUT={raw!r}: expected seconds (a number > 0)")
    return value


def run_bounded(cmd: list[str], env: dict[str, str], timeout_s: float) -> tuple[int | None, str]:
    """Run ``cmd`` in its own process group; after ``timeout_s`` seconds the whole group (torchrun
    and every worker it started) gets SIGTERM, then SIGKILL after :data:`KILL_GRACE_S`.
    Returns (exit code, or None when it timed out; stdout + stderr)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    out: str | None
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        pass
    _kill_group(proc.pid, signal.SIGTERM)
    try:  # communicate, not wait: a worker blocked on a full pipe would never exit
        out, _ = proc.communicate(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        out = None
    _kill_group(proc.pid, signal.SIGKILL)  # whatever of the group outlived SIGTERM (a worker stuck in a collective)
    if out is None:
        out, _ = proc.communicate()
    return None, out or ""


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # the group is gone already
        pass


def torchrun_command(num_processes: int, job_file: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
            "-m", "medqa_core.train.launch", str(job_file)]


def run_distributed(job: dict[str, Any], num_processes: int, work_dir: Path) -> dict[str, Any]:
    """Launch the training job under torchrun and return process 0's stats (TrainStats fields).
    The adapter is left in ``work_dir / "adapter"``."""
    if job.get("device") == "cuda":
        import torch

        if num_processes > torch.cuda.device_count():
            raise TrainingError(f"[train] num_processes = {num_processes}, but only {torch.cuda.device_count()} GPU(s) "
                                "are visible (CUDA_VISIBLE_DEVICES; run pytest without -n)")
    work_dir.mkdir(parents=True, exist_ok=True)
    job_file = work_dir / "job.json"
    job_file.write_text(json.dumps({**job, "out": str(work_dir)}))
    env = dict(os.environ)
    if job.get("device") != "cuda":  # CPU processes split the cores instead of each taking all
        env["MEDQA_THREADS"] = str(max(1, (os.cpu_count() or 1) // num_processes))
    timeout_s = torchrun_timeout()
    rc, out = run_bounded(torchrun_command(num_processes, job_file), env, timeout_s)
    stats_file = work_dir / "stats.json"
    tail = "\n".join(out.strip().splitlines()[-LOG_TAIL:])
    if rc is None:
        raise TrainingError(
            f"torchrun training of {job['case']} on {num_processes} processes did not finish within {timeout_s:.0f} s "
            f"(MEDQA_TORCHRUN_TIMEOUT); it and its workers were killed; last lines:\n{tail}"
        )
    if rc != 0 or not stats_file.is_file():
        raise TrainingError(
            f"torchrun training of {job['case']} on {num_processes} processes failed "
            f"(exit {rc}); last lines:\n{tail}"
        )
    stats: dict[str, Any] = json.loads(stats_file.read_text())
    return stats


def job_for(rows: list[Any], spec: Any, cfg: Any, base_src: str, device: str, case: str) -> dict[str, Any]:
    """The torchrun job of one adapter: rows and paths in (see the module docstring)."""
    return {"case": case, "device": device, "base_src": str(base_src), "spec": dataclasses.asdict(spec),
            "train": dataclasses.asdict(cfg), "rows": [[e.id, e.question, e.answer] for e in rows]}


def _worker(job: dict[str, Any]) -> None:
    from ..data.datasets import QAExample
    from ..model.bases import load_base, load_tokenizer
    from ..resources import configure_threads
    from ..specs import ModelSpec, TrainConfig
    from .finetune import fine_tune

    rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    configure_threads(1)
    device = job["device"]
    if device == "cuda":
        import torch

        torch.cuda.set_device(local_rank)
    spec_fields = dict(job["spec"])
    spec_fields["target_modules"] = tuple(spec_fields.get("target_modules") or ())
    spec = ModelSpec(**spec_fields)
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in job["train"].items()}
    cfg = TrainConfig(**fields)
    rows = [QAExample(*r) for r in job["rows"]]
    if cfg.batch_size % world:
        raise TrainingError(f"[train] batch_size {cfg.batch_size} is not divisible by num_processes {world}")
    per_device = dataclasses.replace(cfg, batch_size=cfg.batch_size // world)
    out = Path(job["out"])
    base_src = job["base_src"]
    stats = fine_tune(load_base(base_src, spec, cfg.quantization, device), load_tokenizer(base_src, spec.revision),
                      spec, rows, per_device, out / f"rank{rank}", device)
    if rank == 0:
        (out / f"rank{rank}").rename(out / "adapter")
        (out / "stats.json").write_text(json.dumps({**dataclasses.asdict(stats), "world_size": world}))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: torchrun --nproc_per_node N -m medqa_core.train.launch JOB.json", file=sys.stderr)
        return 2
    _worker(json.loads(Path(args[0]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
