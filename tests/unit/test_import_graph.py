"""The package's import graph (every `import`/`from ... import` in medqa_core, lazy ones inside
functions included) has no cycle, and the layers of docs/development.md, "Where things are"
point down: the ground floor (errors, cache, resources, paths) imports nothing above it, and
neither the stage subpackages (data, model, train, metrics) nor stages.py import results/ or
the modules that run a case."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "src" / "medqa_core"
GROUND = {"errors", "cache", "resources", "paths"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".") if package else []
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                elif node.module and node.module.startswith("medqa_core"):
                    target = node.module[len("medqa_core"):].lstrip(".")
                else:
                    continue
                names = [target] + [f"{target}.{a.name}".lstrip(".") for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name[len("medqa_core."):] for a in node.names if a.name.startswith("medqa_core.")]
            else:
                continue
            graph[mod].update(n for n in names if n in files and n != mod)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_find_cycle_sees_a_cycle_and_a_clean_graph():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_ground_floor_and_stages_do_not_import_upwards():
    graph = import_graph()
    for mod in GROUND & set(graph):
        assert graph[mod] <= GROUND, f"{mod} imports {sorted(graph[mod] - GROUND)}"
    stage_layers = [m for m in graph if m.split(".")[0] in ("data", "model", "train", "metrics")]
    for mod in stage_layers:
        up = {t for t in graph[mod]
              if t.split(".")[0] == "results" or t in ("stages", "pipeline", "session", "pytest_plugin", "cli", "gate")}
        assert not up, f"{mod} imports {sorted(up)}"
    up = {t for t in graph["stages"] if t.split(".")[0] == "results" or t in ("pipeline", "session", "pytest_plugin", "cli")}
    assert not up, f"stages imports {sorted(up)}"


def test_cache_entries_are_made_in_stages_only():
    """One place for cache keys: every ``get_or_build`` call of the package is in stages.py."""
    callers = sorted(str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
                     if p.name != "cache.py" and ".get_or_build(" in p.read_text())
    assert callers == ["stages.py"], callers
