"""The format check cannot rot: .ci/run (and tox, pre-commit) run ``ruff format --check`` on the
same paths as the lint, and the files it skips (pyproject.toml ``[tool.ruff.format] exclude``,
written before the check existed) are only ever removed: each one listed must exist and still be
unformatted, so a file that gets formatted must leave the list, and a new file is always checked."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXCLUDED: list[str] = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["ruff"]["format"]["exclude"]


def _ruff() -> list[str]:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        pytest.skip("ruff is not installed (it comes with the [dev] extra)")
    return [exe]


def test_every_skipped_file_exists_and_is_still_unformatted():
    assert EXCLUDED == sorted(set(EXCLUDED)), "keep the list sorted and without duplicates"
    missing = [f for f in EXCLUDED if not (REPO / f).is_file()]
    assert missing == [], f"listed in [tool.ruff.format] exclude but gone: {missing}"
    # explicit paths are checked even when excluded (no --force-exclude): the files ruff would reformat
    out = subprocess.run(
        [*_ruff(), "format", "--check", "--output-format", "concise", *EXCLUDED], cwd=REPO, capture_output=True, text=True
    )
    unformatted = {line.split(":", 1)[0] for line in out.stdout.splitlines() if "unformatted:" in line}
    done = sorted(set(EXCLUDED) - unformatted)
    assert done == [], f"already formatted: drop them from [tool.ruff.format] exclude in pyproject.toml: {done}"


def test_ci_tox_and_pre_commit_run_the_format_check():
    ci = (REPO / ".ci" / "run").read_text()
    assert "ruff format --check src tests benchmarks scripts conftest.py" in ci
    assert "ruff format --check" in (REPO / "tox.ini").read_text()
    assert "ruff format --check" in (REPO / ".pre-commit-config.yaml").read_text()
