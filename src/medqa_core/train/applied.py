"""The recipe as applied: read back from the objects that trained (the PEFT model, the optimizer,
the scheduler's learning rates, the tokenized rows), not from the profile.

Two uses (``gate.judge_recipe``):

* **within a run**, against what the profile asked (:func:`asked`), computed independently: LoRA
  scaling is ``alpha / r``; the learning rate at each logged step is transformers'
  ``get_cosine_schedule_with_warmup`` on the profile's numbers; the prompt tokens a training row
  starts with are the tokens generation feeds the model for the same question. A code change that
  trains something other than the recipe (a doubled alpha, a decay the recipe does not have, a
  linear schedule, the loss on the prompt, EOS dropped) fails here even when the scores hold;
* **against the baseline**, exactly (every key of :func:`applied`), so a change of the recipe
  itself is one line naming the setting.

Every value is JSON (floats rounded to 9 significant digits: exact on one machine, and the same
on another, since none depends on arithmetic beyond a cosine).
"""
from __future__ import annotations

import math
from typing import Any

from ..cache import content_key
from ..specs import ModelSpec, TrainConfig

#: the optimizer settings of the recipe (both trainers): AdamW without weight decay
RECIPE_OPTIMIZER = {"weight_decay": 0.0, "betas": [0.9, 0.999], "eps": 1e-8}


def _r(x: float) -> float:
    return float(f"{float(x):.9g}")


def lora_applied(peft_model: Any) -> dict[str, Any]:
    """Rank, scaling and dropout of every LoRA layer (one value when all layers agree, else the
    sorted distinct values), the module names they wrap, and which parameters train."""
    ranks, scales, drops, targets = set(), set(), set(), set()
    for name, mod in peft_model.named_modules():
        r = getattr(mod, "r", None)
        if not isinstance(r, dict) or "default" not in r or not hasattr(mod, "lora_A"):
            continue
        ranks.add(int(r["default"]))
        scales.add(_r(mod.scaling["default"]))
        drop = mod.lora_dropout["default"]
        drops.add(_r(getattr(drop, "p", 0.0)))
        targets.add(name.rsplit(".", 1)[-1])
    trainable = sorted((n, list(p.shape)) for n, p in peft_model.named_parameters() if p.requires_grad)
    def one(s: set[Any]) -> Any:
        return sorted(s)[0] if len(s) == 1 else sorted(s)

    return {"lora_r": one(ranks), "lora_scaling": one(scales), "lora_dropout": one(drops),
            "lora_targets": sorted(targets),
            "trainable_names": content_key([n for n, _ in trainable])[:16],
            "trainable_non_lora": sum(1 for n, _ in trainable if "lora_" not in n)}


def optimizer_applied(opt: Any) -> list[dict[str, Any]]:
    """The optimizer's settings: one entry per distinct (initial learning rate, weight decay, betas,
    eps) over its parameter groups, with the parameters they hold (the Trainer splits decay and
    no-decay groups; with the same settings they are one setting here)."""
    merged: dict[str, dict[str, Any]] = {}
    for g in opt.param_groups:
        row = {"lr": _r(g.get("initial_lr", g["lr"])), "weight_decay": _r(g.get("weight_decay", 0.0)),
               "betas": [_r(b) for b in g.get("betas", ())], "eps": _r(g.get("eps", 0.0))}
        key = repr(sorted(row.items()))
        merged.setdefault(key, {**row, "params": 0})["params"] += sum(p.numel() for p in g["params"])
    return [merged[k] for k in sorted(merged)]


def tokens_applied(examples: list[tuple[list[int], list[int]]], eos_id: int | None, max_length: int) -> dict[str, Any]:
    """Supervised (loss) and prompt (no loss) tokens of the rows as trained, how many rows end in EOS,
    and how many untruncated rows do not (each should: the completion gets EOS appended)."""
    sup = sum(1 for _, lab in examples for t in lab if t != -100)
    prompt = sum(1 for _, lab in examples for t in lab if t == -100)
    ends = sum(1 for _, lab in examples if lab and lab[-1] == eos_id)
    short_no_eos = sum(1 for ids, lab in examples if len(ids) < max_length and not (lab and lab[-1] == eos_id))
    return {"supervised_tokens": sup, "prompt_tokens": prompt, "eos_rows": ends,
            "untruncated_rows_without_eos": short_no_eos, "rows_without_prompt": sum(
                1 for _, lab in examples if not lab or lab[0] != -100)}


def lr_trace(rates: list[float]) -> list[float]:
    return [_r(x) for x in rates]


def applied(peft_model: Any, opt: Any, rates: list[float], examples: list[tuple[list[int], list[int]]] | None,
            tokenizer: Any, max_length: int, prompt_ids: list[int]) -> dict[str, Any]:
    """``prompt_ids``: the prompt tokens a training row for the canary question starts with."""
    out: dict[str, Any] = {**lora_applied(peft_model), "optimizer": optimizer_applied(opt), "lr_at_log": lr_trace(rates)}
    if examples is not None:
        out.update(tokens_applied(examples, tokenizer.eos_token_id, max_length))
    out["train_prompt_ids"] = content_key(list(prompt_ids))[:16]
    return out


def asked(spec: ModelSpec, cfg: TrainConfig, n_params: int, logged_steps: list[int],
          device: str = "cpu", chat: bool = False) -> dict[str, Any]:
    """What the profile asks for, computed without the trainers' code: the values
    :func:`applied` must equal within one run. ``chat``: the rows are rendered by a chat template,
    whose assistant turn ends in the template's end-of-turn text, not in EOS; no EOS is asked
    then (the count is still compared with the baseline's)."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    warmup = max(0, round(cfg.warmup_ratio * cfg.steps))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.learning_rate)
    sched = get_cosine_schedule_with_warmup(opt, warmup, cfg.steps)
    rates = []
    for step in range(1, cfg.steps + 1):
        if step in logged_steps:  # the rate this step's update used, as the Trainer logs it
            rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return {"lora_r": cfg.lora_r, "lora_scaling": _r(cfg.lora_alpha / cfg.lora_r), "lora_dropout": _r(cfg.lora_dropout),
            "lora_targets": sorted(spec.target_modules), "trainable_non_lora": 0,
            "optimizer": [{"lr": _r(cfg.learning_rate), "weight_decay": RECIPE_OPTIMIZER["weight_decay"],
                           "betas": RECIPE_OPTIMIZER["betas"], "eps": RECIPE_OPTIMIZER["eps"], "params": n_params}],
            "lr_at_log": lr_trace(rates), **({} if chat else {"untruncated_rows_without_eos": 0}),
            "rows_without_prompt": 0, "average_tail_steps": _tail_steps(cfg.steps, cfg.average_tail),
            **({"autocast": "bfloat16" if cfg.cpu_bf16 else "none"} if device == "cpu" else {})}


def _tail_steps(steps: int, fraction: float) -> int:
    """``[train] average_tail`` as a count of steps (fraction x steps rounded half up, at least 1;
    0 when off), written out here rather than taken from the trainer."""
    if fraction <= 0:
        return 0
    whole, rest = divmod(fraction * steps, 1)
    return max(1, int(whole) + (rest >= 0.5))


def logged_steps(steps: int) -> list[int]:
    """The steps at which both trainers log (every ``steps // 10``, and the last)."""
    every = max(1, steps // 10)
    return sorted({s for s in range(every, steps + 1, every)} | {steps})


def lr_of_step(opt: Any) -> float:
    """The learning rate the optimizer's step is about to use (read before the scheduler steps)."""
    return float(opt.param_groups[0]["lr"])


def isclose_lists(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-7, abs_tol=1e-12) for x, y in zip(a, b))


def compare(got: dict[str, Any], want: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, applied, asked) for every asked key the applied recipe does not match (the learning
    rates to 1e-7 relative: the same formula, float rounding apart)."""
    out = []
    for key, w in want.items():
        if key not in got:
            continue
        g = got[key]
        ok = isclose_lists(g, w) if key == "lr_at_log" else g == w
        if not ok:
            out.append((key, g, w))
    return out
