"""The type-check configuration cannot rot: mypy is strict on the whole package (pyproject.toml
``[tool.mypy]``), and what is not yet strict is a ratchet of named modules, each with the error
codes it may still have. Every name there is a module of the package, the ratchet only shrinks
(a module or a code not in the list it started from fails here), the third-party modules let
through without types are imported by the package, and .ci/run runs the check."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())
MYPY = CONFIG["tool"]["mypy"]
OVERRIDES: list[dict] = MYPY.get("overrides", [])

#: The ratchet as it started (mypy 2.4.1): module -> the error codes it may still have. Entries
#: may leave pyproject.toml (a module made strict-clean) or lose codes; none may be added there.
RATCHET_START = {
    "medqa_core.model.bases": {"arg-type"},
    "medqa_core.model.params": {"no-any-return"},
    "medqa_core.model.prompts": {"no-any-return"},
    "medqa_core.pipeline": {"attr-defined", "dict-item"},
    "medqa_core.profile": {"no-any-return"},
    "medqa_core.pytest_plugin": {"arg-type", "assignment", "attr-defined", "return-value", "typeddict-item"},
    "medqa_core.resources": {"attr-defined", "misc"},
    "medqa_core.scaffold": {"call-overload", "dict-item", "no-redef"},
    "medqa_core.session": {"misc"},
    "medqa_core.shipped.fixtures.make_fixtures": {"no-any-return", "no-untyped-def"},
    "medqa_core.stages": {"arg-type", "type-arg", "unused-ignore"},
    "medqa_core.train.applied": {"no-untyped-call"},
    "medqa_core.train.launch": {"arg-type", "assignment", "no-any-return"},
    "medqa_core.train.lean": {"attr-defined"},
    "medqa_core.train.sft": {"attr-defined", "misc", "operator", "union-attr", "unused-ignore"},
}


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


def test_ratchet_names_only_modules_that_exist():
    ratchet = _ratchet()
    assert ratchet, "no ratchet entries: delete this test's RATCHET_START and the ratchet test, the package is strict"
    for m in ratchet:
        assert "*" not in m, f"ratchet entry {m!r} is a pattern; name each module"
        assert _module_file(m) is not None, f"ratchet names {m}, which is no module under src/ (moved or deleted?)"


def test_ratchet_only_shrinks():
    for m, o in _ratchet().items():
        assert m in RATCHET_START, f"{m} joined the ratchet; fix its type errors instead"
        assert set(o) <= {"module", "disable_error_code"}, f"{m}: relax it by error code only, not {sorted(set(o) - {'module'})}"
        codes = set(o.get("disable_error_code", []))
        assert codes, f"{m}: an entry without codes is strict: delete it"
        assert codes <= RATCHET_START[m], f"{m}: codes added to the ratchet: {sorted(codes - RATCHET_START[m])}"


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
