"""Collecting the suite imports no heavy library: ``pytest --collect-only tests/`` (with the
medqa-bench plugin active, as in this repository) must not import torch, transformers, peft, trl,
bert_score or tensorflow. They load when a case or a test that needs them runs, so a collection,
``pytest -k ...`` of the light tests and every xdist worker's start stay cheap.

The check runs the collection in a fresh interpreter with an import hook that records, for each
heavy library, the chain of source lines that first imported it (``-X importtime`` cannot show
it: pytest captures the collection's stderr, and a test module is not imported through the
import statement the tree follows)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import REPO_ROOT

HEAVY = ("torch", "transformers", "peft", "trl", "bert_score", "tensorflow")

PROBE = r'''
import json, sys, traceback

HEAVY = tuple(sys.argv[2].split(","))
first = {}


class Spy:
    """Records who imports a heavy library first; finds nothing itself (the import goes on)."""

    def find_spec(self, name, path=None, target=None):
        if name in HEAVY and name not in sys.modules:  # the last lookup before it loads is its import
            first[name] = [f"{f.filename}:{f.lineno} ({f.line})" for f in traceback.extract_stack()[:-1]
                          if not any(s in f.filename for s in ("importlib", "/_pytest/", "/pluggy/", "<string>"))]
        return None


sys.meta_path.insert(0, Spy())
import pytest  # noqa: E402


class Seen:
    items = 0
    active = False

    def pytest_collection_finish(self, session):
        from medqa_core import pytest_plugin

        Seen.items = len(session.items)
        Seen.active = pytest_plugin.active(session.config)


rc = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests/"], plugins=[Seen()])
loaded = {k: v for k, v in first.items() if k in sys.modules}
with open(sys.argv[1], "w") as f:
    json.dump({"rc": int(rc), "items": Seen.items, "active": Seen.active, "loaded": loaded}, f)
'''


def test_collecting_the_suite_imports_no_heavy_library(tmp_path):
    out = tmp_path / "probe.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}  # e.g. an outer -n 2
    proc = subprocess.run([sys.executable, "-c", PROBE, str(out), ",".join(HEAVY)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert out.is_file(), f"the probe did not finish (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    got = json.loads(out.read_text())
    assert got["rc"] == 0, f"collecting tests/ failed (exit {got['rc']}):\n{proc.stdout[-3000:]}"
    assert got["active"] and got["items"] > 100, got  # the plugin took part, the whole folder was collected
    chains = {name: "\n    <- ".join(reversed(stack)) for name, stack in got["loaded"].items()}
    assert not chains, "collection imported heavy libraries (move the import into the test or fixture using it):\n" + \
        "\n".join(f"  {name}: imported by\n    <- {chain}" for name, chain in chains.items())
