"""Every default location in one place.

Two roots: the repository (where the package, the shipped profiles and fixtures live) and the
*working root* of a run: pytest's rootdir for the plugin, the current directory for the
``medqa-bench`` command. The cache, the results and the history default to folders under the
working root; options and environment variables override each of them.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILES_DIR = REPO_ROOT / "profiles"

CACHE_DIR_NAME = ".medqa-cache"
RESULTS_DIR_NAME = ".medqa-results"
HISTORY_FILE_NAME = "history.sqlite"


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
