"""What one pytest run carries between hooks, and what it derives from its options: the run's
state object (in the config's stash), the profile as the run reads it (``--set``, ``--baseline``,
``--data-dir`` applied), the cache and history locations, ``run.toml``."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .. import paths
from ..errors import MedQAError
from ..results.record import BaselineFile, CaseRecord

RECORD_KEY = "medqa_record"
INLINE_RECORD_KEY = "medqa_record_inline"  # a record a full disk could not take, carried in the report


@dataclass
class RunState:
    """What one pytest run carries between hooks (one object in the config's stash, no
    attributes on the config): its id and directory, the profile as this run reads it
    (``--set``, ``--baseline`` applied), the baseline file as it was before the run (the
    summary's deltas) and the lines the terminal summary prints at the end."""

    run_id: str
    run_dir: Path
    profile_ref: str  # as configured: a profile name or a .toml path
    ref_source: str  # where it was configured: "option", "env" or "pyproject"
    n_workers: int = 1  # processes sharing the cores (xdist workers): torch threads are split by it
    profile: Any = None
    baseline_before: BaselineFile | None = None
    finish_lines: list[str] = field(default_factory=list)
    # what went wrong outside a case's own record (a post-run step, a crashed worker): (where, reason)
    problems: list[tuple[str, str]] = field(default_factory=list)
    records: list[CaseRecord] | None = None  # the session's records, gathered once at its end
    started: float = field(default_factory=time.time)  # run.toml's `started` (merge orders attempts by it)


STATE_KEY = pytest.StashKey[RunState]()


def run_state(config: pytest.Config) -> RunState:
    return config.stash[STATE_KEY]


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def active(config: pytest.Config) -> bool:
    """Whether this run uses medqa-bench (a profile is configured)."""
    return STATE_KEY in config.stash


@dataclass(frozen=True)
class Case:
    model: str
    dataset: str

    @property
    def id(self) -> str:
        from ..specs import case_name

        return case_name(self.model, self.dataset)


def cache_dir(config: pytest.Config) -> Path:
    return paths.cache_dir(config.getoption("--cache-dir"), config.rootpath)


def history_path(config: pytest.Config) -> Path | None:
    return paths.history_file(config.getoption("--history"), cache_dir(config))


def write_run_info(config: pytest.Config, exitstatus: int | None = None) -> None:
    """``run.toml`` in the run directory: the profile as given (a name, or a file's absolute path),
    its overrides, the baseline, history and cache this run used, so the ``medqa-bench`` commands
    find them from the run directory without the options repeated."""
    from ..results.summary import write_run_info

    opt = run_state(config).profile_ref
    ref = str(Path(opt).expanduser().resolve()) if Path(opt).suffix == ".toml" else opt
    try:
        profile = active_profile(config)
    except MedQAError:
        return
    hist = history_path(config)
    run_dir = run_state(config).run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_info(run_dir, {
        "run_id": run_state(config).run_id, "profile": ref, "profile_name": profile.name,
        "profile_file": str(Path(profile.path).resolve()), "set": list(config.getoption("medqa_set")),
        "data_dir": str(profile.data_dir), "baseline": str(profile.resolve(str(profile.baseline)).resolve()),
        "history": str(hist.expanduser().resolve()) if hist is not None else None,
        "cache_dir": str(cache_dir(config).expanduser().resolve()),
        "update_baselines": bool(config.getoption("--update-baselines")),
        "exitstatus": exitstatus, "started": round(run_state(config).started, 3),
        "finished": round(time.time(), 3) if exitstatus is not None else None,
    })


def active_profile(config: pytest.Config) -> Any:
    cached = run_state(config).profile
    if cached is None:
        import dataclasses

        from ..profile import load_profile, with_overrides

        cached = with_overrides(load_profile(run_state(config).profile_ref, config.getoption("--data-dir")),
                                config.getoption("medqa_set"))
        if config.getoption("--baseline"):
            cached = dataclasses.replace(cached, baseline=Path(config.getoption("--baseline")).resolve())
        check_data_env(cached)
        run_state(config).profile = cached
    return cached


def check_data_env(profile: Any) -> None:
    """A ``MEDQA_DATA_<NAME>`` that names no dataset of the profile (a typo) would silently run on
    the fixtures: refuse it, listing the variables the profile reads."""
    from ..errors import ConfigError

    known = {d.env_var for d in profile.datasets.values()} | {"MEDQA_DATA_DIR"}
    stray = sorted(k for k in os.environ if k.startswith("MEDQA_DATA_") and k not in known)
    if stray:
        raise ConfigError(f"environment {stray}: no dataset of profile {profile.name!r} reads it; "
                          f"the profile reads {sorted(known)}")


def profile_or_name(config: pytest.Config) -> Any:
    try:
        return active_profile(config)
    except Exception:  # the profile itself may be what is broken
        return run_state(config).profile_ref


def case_models(config: pytest.Config) -> dict[str, tuple[str, str]]:
    from ..specs import case_name

    prof = profile_or_name(config)
    if isinstance(prof, str):
        return {}
    return {case_name(m, d): (m, d) for d in prof.datasets for m in prof.models}
