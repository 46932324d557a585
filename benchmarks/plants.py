"""Planted regressions: known-bad variants of the code or the recipe that the benchmark must fail on.

A plant is either a source patch (an exact ``old`` -> ``new`` substitution in one file of
``src/medqa_core``, applied to a copy of the repository) or profile overrides (``--set``). Each
runs the real benchmark case in a subprocess against the recorded baseline and must fail with
one of the named checks. A patch whose ``old`` text no longer occurs exactly once is an error,
so the list cannot rot silently when the code moves.

Used by ``benchmarks/test_plants.py`` (``-m mutation``) and ``scripts/plants.py`` (the table in
docs/regression-gating.md, with the warm/cold cache protocol).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COPY = ("src", "profiles", "fixtures", "baselines", "benchmarks", "conftest.py", "pyproject.toml")


@dataclass(frozen=True)
class Plant:
    name: str
    what: str
    expect: tuple[str, ...]  # check names (or a check kind: "noise") of which at least one must fail
    file: str | None = None  # under src/medqa_core
    old: str = ""
    new: str = ""
    overrides: tuple[str, ...] = ()
    cheap: bool = False  # runs on every commit (no rebuild of the base model)


PLANTS: tuple[Plant, ...] = (
    Plant("gen_half_tokens", "answers cut to half their tokens in generation.py", ("generation", "answer_words"),
          "model/generation.py", '"max_new_tokens": cfg.max_new_tokens,', '"max_new_tokens": cfg.max_new_tokens // 2,'),
    Plant("answers_half_pipeline", "answers cut to half their words in stages.py", ("answer_words", "noise"),
          "stages.py", "value=[by_q[q] for q in questions])",
          'value=[" ".join(by_q[q].split()[: len(by_q[q].split()) // 2]) for q in questions])'),
    Plant("max_new_tokens_8", "answers cut to 8 new tokens (profile)", ("generation", "answer_words"),
          overrides=("generation.max_new_tokens=8",), cheap=True),
    Plant("steps_div4_code", "the lean loop runs a quarter of the steps, same schedule", ("train_steps",),
          "train/lean.py", "batch_order(len(examples), cfg.batch_size, cfg.steps, cfg.seed)",
          "batch_order(len(examples), cfg.batch_size, cfg.steps // 4, cfg.seed)"),
    Plant("steps_div4", "training steps / 4 (profile)", ("train_steps",), overrides=("train.steps=50",), cheap=True),
    Plant("quarter_rows", "training on a quarter of the rows", ("train_rows", "train_rows_digest"),
          "pipeline.py", "base, spec, data.train, cfg, ctx.device, distributed)",
          "base, spec, data.train[: len(data.train) // 4], cfg, ctx.device, distributed)"),
    Plant("lora_r4", "LoRA r=4 in the trainer (profile says 16)", ("trainable_params_closed_form", "trainable_params"),
          "model/params.py", "r=cfg.lora_r,", "r=4,"),
    Plant("lora_q_only_r2", "LoRA on q_proj only with r=2", ("trainable_params_closed_form", "trainable_params"),
          "model/params.py", "r=cfg.lora_r,\n        lora_alpha=cfg.lora_alpha,\n        lora_dropout=cfg.lora_dropout,\n"
          "        target_modules=list(spec.target_modules),",
          "r=2,\n        lora_alpha=cfg.lora_alpha,\n        lora_dropout=cfg.lora_dropout,\n        target_modules=['q_proj'],"),
    Plant("bertscore_layer", "BERTScore computed on layer 5 instead of 6", ("scorer_canary",),
          "metrics/bertscore.py", "num_layers=NUM_LAYERS, lang=", "num_layers=NUM_LAYERS - 1, lang="),
    Plant("bertscore_idf", "IDF-like token weights on in BERTScore", ("scorer_canary",),
          "metrics/bertscore.py", "idf = defaultdict(lambda: 1.0)",
          'idf = defaultdict(float, {t: __import__("math").log(2.0 + t) for t in range(40000)})'),
    Plant("prompt_no_question", "the prompt template without the question", ("prompt_digest",),
          "model/prompts.py", 'PLAIN_TEMPLATE = "Question: {question}\\nAnswer:"', 'PLAIN_TEMPLATE = "Question:\\nAnswer:"',
          cheap=True),
    Plant("leak_after_check", "10% of the test rows leaked into training after the leak check",
          ("train_test_overlap", "train_rows"), "pipeline.py",
          "data = load_split(dspec, profile.data_dir, profile.split)\n",
          "data = load_split(dspec, profile.data_dir, profile.split)\n"
          "        data.train.extend(data.test[: len(data.test) // 10])\n"),
    Plant("train_3x_slower", "training loop ~3x slower (each step's forward/backward done three times)",
          ("train_work",), "train/lean.py", "            loss.backward()\n            torch.nn.utils.clip_grad_norm_",
          "            loss.backward()\n            for _ in range(2):\n                opt.zero_grad(set_to_none=True)\n"
          "                loss = step_loss(peft_model, batch, answers_only)\n                loss.backward()\n"
          "            torch.nn.utils.clip_grad_norm_"),
    Plant("gen_5x_slower", "generation 5x slower (every batch generated five times)", ("generate_work",),
          "model/generation.py", "out = model.generate(**enc, **kwargs, use_cache=True)",
          "out = [model.generate(**enc, **kwargs, use_cache=True) for _ in range(5)][-1]"),
    Plant("lr_div10", "learning rate / 10 (profile)", ("noise",), overrides=("train.learning_rate=2e-4",)),
    # the recipe as applied (train/applied.py, gate.judge_recipe): changes the scores may not show
    Plant("lora_alpha_x2", "LoRA alpha doubled in the trainer (scaling 4 instead of 2)", ("recipe:lora_scaling",),
          "model/params.py", "lora_alpha=cfg.lora_alpha,", "lora_alpha=cfg.lora_alpha * 2,"),
    Plant("lora_dropout_on", "LoRA dropout 0.05 in the trainer (profile says 0)", ("recipe:lora_dropout",),
          "model/params.py", "lora_dropout=cfg.lora_dropout,\n        target_modules",
          "lora_dropout=0.05,\n        target_modules"),
    Plant("weight_decay", "AdamW weight decay 0.01 in the lean loop (the recipe has none)", ("recipe:optimizer",),
          "train/lean.py", "torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)",
          "torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.01)"),
    Plant("linear_schedule", "linear decay instead of cosine after warm-up", ("recipe:lr_at_log",),
          "train/lean.py", "return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))",
          "return max(0.0, 1.0 - progress)"),
    Plant("no_eos", "EOS no longer appended to the training completions", ("recipe:untruncated_rows_without_eos",),
          "train/lean.py", 'completion = r["completion"] if r["completion"].endswith(eos) else r["completion"] + eos',
          'completion = r["completion"]'),
    Plant("loss_on_prompt", "the loss computed on the prompt tokens too", ("recipe:rows_without_prompt",),
          "train/lean.py", "out.append((ids, ([-100] * n + full[n:])[:max_length]))",
          "out.append((ids, list(full[:max_length])))"),
    Plant("train_prompt_space", "training prompts end in a space that generation prompts lack", ("recipe:prompt_layout",),
          "model/prompts.py", 'return [{"prompt": build_prompt(tokenizer, q), "completion": " " + a} for q, a in pairs]',
          'return [{"prompt": build_prompt(tokenizer, q) + " ", "completion": a} for q, a in pairs]'),
)
BY_NAME = {p.name: p for p in PLANTS}

#: ``--seeds`` of a planted (and a clean) run when the caller names none: one run per case, whatever
#: ``--seeds`` / ``MEDQA_SEEDS`` ask of the matrix. The plant table of docs/regression-gating.md was
#: measured on one run, the gate's least power; the checks the commit CI's three plants trip
#: (``generation``/``answer_words``, ``train_steps``, ``prompt_digest``) are invariants or far
#: beyond their bands. ``MEDQA_PLANT_SEEDS`` (a count or a list, as ``--seeds``) changes it.
PLANT_SEEDS = os.environ.get("MEDQA_PLANT_SEEDS") or "1"


def materialize(plant: Plant | None, dest: Path) -> Path:
    """A copy of the repository's run files under ``dest`` with the plant's patch applied."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".medqa-*")
    for name in COPY:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        elif src.is_file():
            shutil.copy2(src, dest / name)
    if plant is not None and plant.file:
        target = dest / "src" / "medqa_core" / plant.file
        text = target.read_text()
        n = text.count(plant.old)
        if n != 1:
            raise RuntimeError(f"plant {plant.name}: the text to replace occurs {n} times in {plant.file} (expected 1); "
                               "update benchmarks/plants.py to the current code")
        target.write_text(text.replace(plant.old, plant.new))
    return dest


def run(plant: Plant | None, work: Path, case: str, cache: Path, baseline: Path | None = None,
        seeds: str | None = None, extra_env: dict[str, str] | None = None, timeout: float = 1800) -> dict[str, Any]:
    """Run ``case`` with the plant (None = clean code) in a fresh copy; the case record and outcome."""
    tree = materialize(plant, work / "tree")
    results = work / "results"
    before = set(results.glob("*/")) if results.exists() else set()
    cmd = [sys.executable, "-m", "pytest", "benchmarks/test_medqa.py", "-k", case, "-p", "no:cacheprovider",
           "-p", "no:xdist", "-q", "--cache-dir", str(cache), "--results-dir", str(results), "--history", "none",
           "--baseline", str(baseline or (REPO / "baselines" / "tiny.json"))]
    cmd += ["--seeds", seeds or PLANT_SEEDS]
    for o in (plant.overrides if plant else ()):
        cmd += ["--set", o]
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "MEDQA_THREADS": os.environ.get("MEDQA_THREADS", "1"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(extra_env or {})}
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    new = sorted(set(results.glob("*/")) - before)
    rec_path = new[-1] / f"{case}.json" if new else None
    if rec_path is None or not rec_path.is_file():
        raise RuntimeError(f"plant {plant.name if plant else 'clean'}: no record written (exit {proc.returncode}):\n"
                           + proc.stdout[-3000:] + proc.stderr[-2000:])
    rec = json.loads(rec_path.read_text())
    return {"exit": proc.returncode, "record": rec, "cached": rec.get("cached", {}), "stdout": proc.stdout}


@dataclass
class Outcome:
    plant: str
    caught: bool
    status: str
    failing: list[str] = field(default_factory=list)
    expected_hit: list[str] = field(default_factory=list)
    explain: str = ""


def judge(plant: Plant, result: dict[str, Any]) -> Outcome:
    """Caught = pytest failed and at least one expected check (by name or kind) failed."""
    verdict = result["record"]["verdict"]
    failing = [c for c in verdict["checks"] if not c["passed"]]
    names = [c["name"] for c in failing]
    hit = [c["name"] for c in failing if c["name"].split("@")[0] in plant.expect or c["kind"] in plant.expect]
    return Outcome(plant.name, result["exit"] != 0 and bool(hit), verdict["status"], names, hit, verdict["explain"])
