"""The type-check configuration cannot rot: mypy is strict on the whole package (pyproject.toml
``[tool.mypy]``) with no module of ours relaxed, the third-party modules let through without
types are imported by the package, and .ci/run runs the check."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())
MYPY = CONFIG["tool"]["mypy"]
OVERRIDES: list[dict] = MYPY.get("overrides", [])

def _modules(override: dict) -> list[str]:
    mods = override["module"]
    return [mods] if isinstance(mods, str) else list(mods)


def _ratchet() -> dict[str, dict]:
    """Our own modules with relaxed settings: module -> its override."""
    out: dict[str, dict] = {}
    for o in OVERRIDES:
        for m in _modules(o):
            if m == "medqa_core" or m.startswith("medqa_core."):
                assert m not in out, f"{m} is named by two [[tool.mypy.overrides]] entries"
                out[m] = o
    return out


def _module_file(module: str) -> Path | None:
    base = SRC.joinpath(*module.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def test_mypy_is_strict_on_the_whole_package():
    assert MYPY.get("strict") is True
    assert MYPY.get("files") == ["src/medqa_core"]
    # nothing relaxed for every module at once: relaxations are per module, by name
    for key in ("ignore_errors", "ignore_missing_imports", "disable_error_code", "follow_imports"):
        assert key not in MYPY, f"[tool.mypy] {key} applies to every module; name the modules in an override"


def test_no_module_of_ours_is_relaxed():
    """The ratchet of not-yet-strict modules emptied on 2026-12-07 (15 modules when it started):
    no override may name one of our modules again; a type error is fixed, not let through."""
    assert _ratchet() == {}, f"[[tool.mypy.overrides]] relaxes {sorted(_ratchet())}: fix their type errors instead"


def test_untyped_third_party_modules_are_third_party_and_imported():
    code = "\n".join(p.read_text() for p in (SRC / "medqa_core").rglob("*.py"))
    for o in OVERRIDES:
        if not o.get("ignore_missing_imports"):
            continue
        for m in _modules(o):
            top = m.removesuffix(".*")
            assert not top.startswith("medqa_core"), f"{m}: our own modules are never missing"
            assert re.search(rf"^\s*(?:import|from)\s+{re.escape(top)}\b", code, flags=re.M), \
                f"{m} is let through untyped but nothing in src/medqa_core imports it"


def test_package_ships_its_types_and_ci_checks_them():
    assert (SRC / "medqa_core" / "py.typed").is_file()
    assert "py.typed" in CONFIG["tool"]["setuptools"]["package-data"]["medqa_core"]
    assert any(d.startswith("mypy==") for d in CONFIG["project"]["optional-dependencies"]["dev"]), "pin mypy in dev"
    assert re.search(r"^\.venv/bin/mypy \|\| lint_rc=\$\?$", (REPO / ".ci" / "run").read_text(), flags=re.M)
