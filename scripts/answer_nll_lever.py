"""Measure a candidate lever for issue 21's plants: the tuned model's mean negative log-likelihood
of the *reference* answers of the test set (teacher-forced, completion tokens only, the loss the
trainer minimises), per cached adapter, against the seed spread of the unchanged recipe.

BERTScore and USE judge generated answers: greedy decoding turns a small change of the adapter
into a different answer, so their between-seed sd (~0.006 BERTScore F1 on 120 MedQuAD questions)
is as large as what a planted training bug costs (~0.013). The reference NLL needs no decoding.
This script reads every adapter in a cache filled by recording runs and planted gate runs of
one profile (same base model), groups them by recipe (steps, learning rate) and prints each
adapter's NLL, each group's mean and sd, and each group's shift from the largest group (the
unchanged recipe) in units of that group's between-seed sd.

    python scripts/answer_nll_lever.py --cache .medqa-cache --profile questions.toml [--max-length 128]

The measurement that led to the gate's ``answer_nll`` measure ([gate] answer_nll; docs/own-data.md,
"The reference answers' likelihood"), kept to re-measure a cache: it sums the loss over all answer
tokens of the test set (token-weighted), where the gated measure averages per pair.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", required=True, help="the cache directory the runs filled (.medqa-cache)")
    ap.add_argument("--profile", required=True, help="the profile the runs used")
    ap.add_argument("--dataset", help="dataset name in the profile (default: its only one)")
    ap.add_argument("--max-length", type=int, default=128, help="tokens per test pair (default 128: the recipe's)")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    import torch
    from peft import PeftModel

    from medqa_core.data.split import load_split
    from medqa_core.model.bases import load_base, load_tokenizer
    from medqa_core.model.prompts import training_rows
    from medqa_core.profile import load_profile
    from medqa_core.resources import native_cpu_bf16
    from medqa_core.train.lean import collate, encode_rows

    prof = load_profile(args.profile)
    name = args.dataset or next(iter(prof.datasets))
    spec = next(iter(prof.models.values()))
    split = load_split(prof.datasets[name], prof.data_dir, prof.split)
    cache = Path(args.cache)
    bases = [Path(p).parent for p in glob.glob(str(cache / "base/*/*/config.json"))]
    if not bases:
        raise SystemExit(f"{cache}: no base model in this cache")
    base_dir = bases[0]
    tok = load_tokenizer(base_dir)
    examples = encode_rows(tok, training_rows(tok, [(e.question, e.answer) for e in split.test]), args.max_length)
    bf16 = native_cpu_bf16()

    def nll(model: Any) -> float:
        model.eval()
        total = count = 0.0
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), amp:
            for i in range(0, len(examples), args.batch_size):
                b = collate(examples[i : i + args.batch_size], tok.pad_token_id, False)
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
                labels = b["labels"][:, 1:]
                total += float(torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"))
                count += int((labels != -100).sum())
        return total / count

    t0 = time.perf_counter()
    print(f"{len(examples)} test pairs, max_length {args.max_length}, {'bf16' if bf16 else 'fp32'}", flush=True)
    print(f"base model: NLL {nll(load_base(base_dir, spec, 'none', 'cpu')):.4f} "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    groups: dict[tuple[int, float], dict[int, float]] = defaultdict(dict)
    for meta_path in sorted(glob.glob(str(cache / "adapter/*/*/meta.json"))):
        meta = json.loads(Path(meta_path).read_text())
        train = meta["inputs"]["train"]
        key = (int(train["steps"]), float(train["learning_rate"]))
        if train["seed"] in groups[key]:
            continue  # the same recipe and seed under other code: one is enough
        t0 = time.perf_counter()
        model = PeftModel.from_pretrained(load_base(base_dir, spec, "none", "cpu"), str(Path(meta_path).parent / "adapter"))
        groups[key][int(train["seed"])] = value = nll(model)
        print(json.dumps({"steps": key[0], "lr": key[1], "seed": train["seed"], "nll": round(value, 4),
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    ref_key = max(groups, key=lambda k: len(groups[k]))
    ref = groups[ref_key]
    sd = statistics.stdev(ref.values()) if len(ref) > 1 else float("nan")
    print(f"unchanged recipe (steps {ref_key[0]}, lr {ref_key[1]:g}): mean {statistics.fmean(ref.values()):.4f}, "
          f"between-seed sd {sd:.4f} over seeds {sorted(ref)}")
    for key, runs in groups.items():
        if key == ref_key:
            continue
        shifts = [runs[s] - ref[s] for s in runs if s in ref]  # paired: same seed, same data order
        mean_shift = statistics.fmean(runs.values()) - statistics.fmean(ref.values())
        print(f"steps {key[0]}, lr {key[1]:g}: seeds {sorted(runs)}, NLL shift {mean_shift:+.4f} "
              f"({mean_shift / sd:+.1f} sd); same-seed shifts {[round(x, 4) for x in shifts]}")


if __name__ == "__main__":
    main()
