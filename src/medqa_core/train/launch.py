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
run without ``-n`` (xdist pins each worker to one GPU).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..errors import TrainingError

LOG_TAIL = 25


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
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
           "-m", "medqa_core.train.launch", str(job_file)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    stats_file = work_dir / "stats.json"
    if proc.returncode != 0 or not stats_file.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-LOG_TAIL:])
        raise TrainingError(
            f"torchrun training of {job['case']} on {num_processes} processes failed "
            f"(exit {proc.returncode}); last lines:\n{tail}"
        )
    return json.loads(stats_file.read_text())


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
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["train"].items()})
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
