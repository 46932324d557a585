"""Native CPU bf16 as a training and generation lever (issues 21 and 27), measured, never emulated.

On a CPU with AVX512-BF16 or AMX, a LoRA step under ``torch.autocast("cpu", bfloat16)`` against
the same step in float32: the plain transformers + peft loop (benchmarks/plain.py), the same rows
and batches, alternated ``--reps`` times in one process; and greedy generation of ``--questions``
test questions both ways. Also reports how far the bf16 losses and answers are from fp32's, since
bf16 changes the numbers (a baseline recorded in fp32 would no longer reproduce).

    python scripts/cpu_bf16.py --profile PROFILE.toml [--steps 4] [--reps 2] [--out bf16.json]

On a CPU without native bf16 it says so and measures nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medqa_core.resources import native_cpu_bf16 as native_bf16  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--cache-dir", default=".medqa-cache")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--out")
    args = ap.parse_args()
    if not native_bf16():
        print("this CPU has no native bf16 (AVX512-BF16 / AMX absent): nothing measured (never emulated)")
        return 0

    import torch

    from benchmarks.plain import plain_lora_loop
    from medqa_core import stages
    from medqa_core.cache import Cache
    from medqa_core.data.split import load_split
    from medqa_core.model.bases import load_base, load_tokenizer
    from medqa_core.model.generation import generate_answers
    from medqa_core.profile import load_profile

    prof = load_profile(args.profile)
    model_name, spec = next(iter(prof.models.items()))
    dataset = next(iter(prof.datasets.values()))
    src = stages.base(prof, spec, Cache(Path(args.cache_dir))).source
    tok = load_tokenizer(src)
    data = load_split(dataset, prof.data_dir, prof.split)
    pairs = [(e.question, e.answer) for e in data.train]
    cfg = dataclasses.replace(prof.train, steps=args.steps, warmup_ratio=0.0)

    def ctx(bf16: bool):
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    train: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.reps):
        for name in ("fp32", "bf16"):
            with ctx(name == "bf16"):
                tokens, _fed, seconds = plain_lora_loop(load_base(src, spec), tok, spec, pairs, cfg)
            train[name].append(tokens / seconds)
            print(f"train {name}: {tokens / seconds:.1f} tokens/s", flush=True)

    questions = [e.question for e in data.test[: args.questions]]
    gen_s: dict[str, float] = {}
    answers: dict[str, list[str]] = {}
    model = load_base(src, spec).eval()
    for name in ("fp32", "bf16", "fp32"):  # fp32 twice: the first call warms up
        t0 = time.perf_counter()
        with ctx(name == "bf16"):
            answers[name] = generate_answers(model, tok, questions, prof.generation, "cpu", {})
        gen_s[name] = time.perf_counter() - t0
        print(f"generate {name}: {gen_s[name]:.1f} s for {len(questions)} questions", flush=True)
    same = sum(a == b for a, b in zip(answers["fp32"], answers["bf16"]))

    def med(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    out = {"model": model_name, "dataset": dataset.name, "steps": args.steps, "batch_size": cfg.batch_size,
           "max_length": cfg.max_length, "train_tokens_per_s": train,
           "train_ratio_bf16_vs_fp32": round(med(train["bf16"]) / med(train["fp32"]), 3),
           "generate_seconds": gen_s, "generate_ratio_bf16_vs_fp32": round(gen_s["fp32"] / gen_s["bf16"], 3),
           "identical_answers": f"{same}/{len(questions)}"}
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
