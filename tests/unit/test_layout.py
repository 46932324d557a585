"""The tests' own layout (tests/conftest.py): every test file sits in a tier directory, and no
test module imports another (shared builders live in tests/helpers.py)."""
from __future__ import annotations

import ast

from helpers import REPO_ROOT

TESTS = REPO_ROOT / "tests"


def _test_files() -> list:
    return sorted(TESTS.rglob("test_*.py"))


def test_every_test_file_is_in_a_tier():
    files = _test_files()
    assert len(files) > 50
    assert [p for p in files if p.relative_to(TESTS).parts[0] not in ("unit", "integration", "slow")] == []


def test_no_test_module_imports_another():
    names = {p.stem for p in _test_files()}
    found = []
    for p in _test_files():
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [(p.name, m) for m in mods if m.split(".")[0] in names]
    assert found == []
