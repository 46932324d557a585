"""Every default location in one place.

Two roots, neither computed from a source tree:

* the *shipped* data: profiles, tiny bases, tokenizer, fixture datasets and recorded baselines,
  package data of ``medqa_core`` read through :mod:`importlib.resources` (the same files in a
  wheel install and in a clone, where ``profiles/``, ``fixtures/`` and ``baselines/`` at the
  repository root are links into the package);
* the *working root* of a run: pytest's rootdir for the plugin, the current directory for the
  ``medqa-bench`` command. The cache, the results and the history default to folders under it,
  and the git provenance of a record is read from it; options and environment variables
  override each of them.

A profile value written ``medqa:<path>`` names a shipped file (``medqa:fixtures/models/llama``),
so a profile in a user's repository can use the tiny bases without an absolute path.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

#: the package's data folder (a real directory: medqa-bench is never imported from a zip)
SHIPPED = Path(str(resources.files("medqa_core") / "shipped"))
PROFILES_DIR = SHIPPED / "profiles"
FIXTURES_DIR = SHIPPED / "fixtures"
SHIPPED_PREFIX = "medqa:"

CACHE_DIR_NAME = ".medqa-cache"
RESULTS_DIR_NAME = ".medqa-results"
HISTORY_FILE_NAME = "history.sqlite"

_work_root: Path | None = None


def set_work_root(root: str | os.PathLike[str]) -> None:
    """The working root of this process (the plugin sets pytest's rootdir, the command its cwd)."""
    global _work_root
    _work_root = Path(root)


def work_root() -> Path:
    """The working root set for this process, else the current directory."""
    return _work_root if _work_root is not None else Path.cwd()


def shipped(value: str) -> Path | None:
    """``medqa:<relative path>`` -> the shipped file or folder; any other value -> None."""
    if not value.startswith(SHIPPED_PREFIX):
        return None
    rel = value[len(SHIPPED_PREFIX):].lstrip("/")
    return SHIPPED / rel


def as_shipped_ref(path: Path) -> str | None:
    """The ``medqa:`` name of a path inside the shipped data, or None for any other path."""
    try:
        rel = path.resolve().relative_to(SHIPPED.resolve())
    except ValueError:
        return None
    return SHIPPED_PREFIX + rel.as_posix()


def cache_dir(option: str | os.PathLike[str] | None, root: Path) -> Path:
    """``--cache-dir``, else ``$MEDQA_CACHE_DIR``, else ``<root>/.medqa-cache``."""
    return Path(option or os.environ.get("MEDQA_CACHE_DIR") or root / CACHE_DIR_NAME)


def results_dir(option: str | os.PathLike[str] | None, root: Path) -> Path:
    """``--results-dir``, else ``$MEDQA_RESULTS_DIR``, else ``<root>/.medqa-results``."""
    return Path(option or os.environ.get("MEDQA_RESULTS_DIR") or root / RESULTS_DIR_NAME)


def history_file(option: str | None, cache: Path) -> Path | None:
    """``--history`` (``none`` = no history), else ``$MEDQA_HISTORY``, else ``<cache>/history.sqlite``."""
    opt = option or os.environ.get("MEDQA_HISTORY")
    if opt and opt.lower() == "none":
        return None
    return Path(opt) if opt else cache / HISTORY_FILE_NAME


def find_root(start: Path | None = None) -> Path:
    """The working root of a ``medqa-bench`` command run from ``start`` (default: the current
    directory): the nearest folder upwards holding a ``pyproject.toml`` with a
    ``[tool.medqa-bench]`` table, else the nearest holding ``.git``, else ``start`` itself; the
    same folder pytest's rootdir is in a repository configured for the plugin."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if configured_profile(d) is not None:
            return d
    for d in (here, *here.parents):
        if (d / ".git").exists():
            return d
    return here


def configured_profile(root: Path) -> str | None:
    """``[tool.medqa-bench] profile`` of ``<root>/pyproject.toml`` (a relative ``.toml`` path made
    absolute against that file's folder), or None when there is none. Raises ValueError on a
    non-string value."""
    import tomllib

    pyproject = root / "pyproject.toml"
    try:
        table = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {}).get("medqa-bench", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    ref = table.get("profile") if isinstance(table, dict) else None
    if ref is None or ref == "":
        return None
    if not isinstance(ref, str):
        raise ValueError(f"{pyproject}: [tool.medqa-bench] profile = {ref!r}: must be a string (a name or a .toml path)")
    if ref.endswith(".toml") and not Path(ref).expanduser().is_absolute():
        ref = str(root / ref)
    return ref
