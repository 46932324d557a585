"""Training speed levers for a real model on real data, each against the plain transformers +
peft loop, measured in one process (docs/own-data.md, "Measured on real data").

    python scripts/real_levers.py --profile PROFILE.toml [--cache-dir DIR] [--steps 6] [--out levers.json]

For the profile's first model and dataset: the train split, the profile's [train] recipe cut to
``--steps`` steps (the same steps and batches for every lever), then per lever the non-padding
tokens per second and the ratio to the plain loop (benchmarks/plain.py: a bare PyTorch LoRA loop
fed the same rows in the same batches). Levers: the two trainers (trl SFTTrainer, the lean
loop), padding-free packing, and max_length 128 (fewer tokens per row). bf16 is measured only
where the CPU has native bf16 (AVX512-BF16 / AMX), never emulated.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.plain import plain_lora_loop  # noqa: E402
from medqa_core import stages  # noqa: E402
from medqa_core.cache import Cache  # noqa: E402
from medqa_core.data.split import load_split  # noqa: E402
from medqa_core.model.bases import load_base, load_tokenizer  # noqa: E402
from medqa_core.profile import load_profile  # noqa: E402
from medqa_core.resources import native_cpu_bf16 as native_bf16  # noqa: E402
from medqa_core.train.finetune import fine_tune  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--cache-dir", default=".medqa-cache")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out")
    args = ap.parse_args()
    prof = load_profile(args.profile)
    model, spec = next(iter(prof.models.items()))
    dataset = next(iter(prof.datasets.values()))
    src = stages.base(prof, spec, Cache(Path(args.cache_dir))).source
    tok = load_tokenizer(src)
    data = load_split(dataset, prof.data_dir, prof.split)
    rows = data.train
    base_cfg = dataclasses.replace(prof.train, warmup_ratio=0.0)

    def ours(**over: object) -> float:
        cfg = dataclasses.replace(base_cfg, steps=args.steps, **over)
        with tempfile.TemporaryDirectory() as d:
            st = fine_tune(load_base(src, spec), tok, spec, rows, cfg, Path(d), "cpu")
        return float(st.tokens_per_s)

    def plain(**over: object) -> float:
        cfg = dataclasses.replace(base_cfg, steps=args.steps, **over)
        qa = [(e.question, e.answer) for e in rows]
        tokens, _fed, seconds = plain_lora_loop(load_base(src, spec), tok, spec, qa, cfg)
        return tokens / seconds

    levers: list[tuple[str, object]] = [
        ("plain transformers+peft loop", lambda: plain()),
        ("ours: trl SFTTrainer", lambda: ours(trainer="sft", packing=False)),
        ("ours: lean loop", lambda: ours(trainer="lean", packing=False)),
        ("ours: lean loop + packing", lambda: ours(trainer="lean", packing=True)),
    ]
    if base_cfg.max_length > 128:  # fewer tokens per row, where the profile's own are longer
        levers += [("plain loop, max_length 128", lambda: plain(max_length=128)),
                   ("ours: lean loop, max_length 128", lambda: ours(trainer="lean", packing=False, max_length=128))]
    if not native_bf16():
        print("bf16: not measured (this CPU has no native bf16: AVX512-BF16 / AMX absent)")
    out = {"model": model, "dataset": dataset.name, "steps": args.steps, "batch_size": base_cfg.batch_size,
           "max_length": base_cfg.max_length, "rows": len(rows), "native_bf16": native_bf16(), "levers": {}}
    t0 = time.perf_counter()
    for name, fn in levers:
        s = time.perf_counter()
        tps = fn()  # type: ignore[operator]
        out["levers"][name] = {"tokens_per_s": round(tps, 1), "wall_s": round(time.perf_counter() - s, 1)}
        print(f"{name:40s} {tps:8.1f} tokens/s  ({time.perf_counter() - s:.0f} s)", flush=True)
    ref = out["levers"]["plain transformers+peft loop"]["tokens_per_s"]
    for row in out["levers"].values():
        row["ratio_vs_plain"] = round(row["tokens_per_s"] / ref, 3)
    print(f"total {time.perf_counter() - t0:.0f} s")
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
