"""Probe of issue 27: where the between-seed spread of the tiny matrix comes from. It runs
``scripts/noise_sweep.py`` (the real pipeline, one run per case and seed) with the lean trainer
changed in this process only:

* ``--fix order``: every seed trains on seed 0's batch order; the seed moves only the LoRA
  initialisation. ``--fix init``: every seed starts from seed 0's LoRA initialisation; the
  seed moves only the batch order.

Tail averaging is a profile option (``[train] average_tail``): pass it to noise_sweep.py as
``--set train.average_tail=0.5``. (Its first, four-case probe, the files
``docs/results/sweeps/20261207-probe-tail-average-*.json.gz``, patched the trainer in-process
the way this script patches the seeds.)

    MEDQA_THREADS=1 python scripts/spread_probe.py --fix order -- --cases llama-wikidoc \\
        --seeds 1-4 --cache-dir /tmp/probe-order --out /tmp/probe-order.json

Use its own ``--cache-dir``: the cache key does not know about these changes. Compare the
output with ``scripts/spread_sources.py``. Nothing here is used by the pipeline.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def fix(which: str) -> None:
    import peft
    import torch

    import medqa_core.train.lean as lean

    if which == "order":
        batch_order = lean.batch_order
        lean.batch_order = lambda n, b, steps, seed: batch_order(n, b, steps, 0)  # type: ignore[assignment]
    else:
        get_peft_model = peft.get_peft_model

        def seeded(*args: Any, **kwargs: Any) -> Any:
            torch.manual_seed(0)  # the LoRA A matrices draw from here
            return get_peft_model(*args, **kwargs)

        peft.get_peft_model = seeded


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--fix",
        choices=("order", "init"),
        default=None,
        help="order: the seed moves only the LoRA init; init: the seed moves only the batch order",
    )
    ap.add_argument("sweep_args", nargs=argparse.REMAINDER, help="after --: scripts/noise_sweep.py's arguments")
    args = ap.parse_args()
    rest = args.sweep_args[1:] if args.sweep_args[:1] == ["--"] else args.sweep_args
    if not any(a == "--cache-dir" or a.startswith("--cache-dir=") for a in rest):
        ap.error(
            "give the sweep its own --cache-dir: the cache key does not know about --fix, so the "
            "patched adapters would be served to later runs"
        )
    if args.fix:
        fix(args.fix)
    import noise_sweep

    return noise_sweep.main(rest)


if __name__ == "__main__":
    sys.exit(main())
