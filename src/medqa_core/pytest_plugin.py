"""pytest plugin: the hooks and fixtures (the options, run state, records and post-run chain they
delegate to live in :mod:`medqa_core.plugin`).

Installed as a ``pytest11`` entry point, so it is loaded in every pytest run of an environment
that has medqa-bench, and it stays inert (no torch import, no profile read, no files written)
unless a profile is configured: ``--profile NAME|PATH``, ``$MEDQA_PROFILE``, or

    [tool.medqa-bench]
    profile = "medqa.toml"     # relative to the pyproject.toml

in the rootdir's ``pyproject.toml``. The configured profile's cases are then collected two ways:

* the profile file itself, when pytest walks over it (``pytest`` in the repository, or
  ``pytest medqa.toml``), yields one item per ``model-dataset`` case: no test module to copy;
* any test function requesting the ``medqa_case`` fixture is parametrized over the cases; with
  the ``medqa_run`` fixture it runs and judges one (``medqa_run(medqa_case).check()``), which is
  how this repository's ``benchmarks/test_medqa.py`` and a user's own wrapper tests use it.

A run that judged nothing fails: every collected case skipped, or (with the profile named on the
command line or in the environment) no case run at all; ``--allow-empty`` accepts it.
Works under pytest-xdist: workers write one JSON record per case; the controller reads them
for the summary table and, with ``--update-baselines``, writes the baseline file once.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from . import paths
from .errors import MedQAError
from .plugin.finish import ended_before_start, finish_session
from .plugin.options import MARKERS, add_options, check_usage, pin_worker_gpu, profile_ref, visible_gpus
from .plugin.records import COLLECTOR_KEY, RecordCollector, judged_nothing
from .plugin.state import (
    INLINE_RECORD_KEY,
    RECORD_KEY,
    STATE_KEY,
    Case,
    RunState,
    active,
    active_profile,
    cache_dir,
    is_worker,
    run_state,
)
from .results.record import BaselineFile, CaseRecord, Status


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` = one worker per GPU on a GPU machine (xdist's CPU count otherwise)."""
    gpus = visible_gpus()
    return len(gpus) or None


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    ref = profile_ref(config)
    if ref is None:  # not a medqa-bench run: nothing imported, read or written
        return
    collector = RecordCollector()
    config.stash[COLLECTOR_KEY] = collector
    config.pluginmanager.register(collector)
    paths.set_work_root(config.rootpath)  # provenance (git sha) of the user's repository
    if is_worker(config):
        # Before anything imports torch: the caller's CUDA_VISIBLE_DEVICES is respected and split.
        given: dict[str, Any] = config.workerinput  # type: ignore[attr-defined]  # set by xdist on its workers
        pin_worker_gpu(given["workerid"], visible_gpus())
        run_id = given["medqa_run_id"]
        n_workers = int(given.get("workercount", 1))
    else:
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        n = getattr(config.option, "numprocesses", None)
        n_workers = n if isinstance(n, int) and n > 0 else 1
    root = paths.results_dir(config.getoption("--results-dir"), config.rootpath)
    config.stash[STATE_KEY] = RunState(run_id, root / run_id, *ref, n_workers=n_workers)
    from .resources import preset_thread_env

    # Before anything imports torch (a test module, a case): this process's thread count is
    # decided and OMP_NUM_THREADS set, so torch's OpenMP pool is sized for the split whenever torch
    # loads; the tiny baseline's time was recorded with it set this early (set late, -n 2 ran
    # generate_work x4-6 on an idle machine). torch itself is imported when the first case runs
    # (runner(): configure_threads applies the count), never at collection.
    preset_thread_env(n_workers)
    _start_progress(config)
    url = config.getoption("--alert-webhook")
    if url and not is_worker(config):  # a bad URL is a usage error now, not a lost alert at the end
        from .results.alerts import check_url

        try:
            check_url(url)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
    if not is_worker(config) and not (config.option.help or config.option.version):
        try:
            check_usage(config)
        except pytest.UsageError as exc:
            ended_before_start(config, str(exc))
            raise


_progress_key = pytest.StashKey[Any]()


def _start_progress(config: pytest.Config) -> None:
    """Show live progress (progress.py) through the terminal reporter when --progress wants it."""
    from . import progress

    if is_worker(config):  # a worker's terminal is not shown
        return
    import sys

    isatty = getattr(sys.stdout, "isatty", lambda: False)()  # what the terminal reporter will write to
    if progress.wanted(config.getoption("--progress"), int(config.option.verbose or 0), isatty):
        sink = progress.TerminalSink(config)
        progress.add_sink(sink)
        config.stash[_progress_key] = sink


def pytest_unconfigure(config: pytest.Config) -> None:
    if not active(config):
        return
    from . import progress

    sink = config.stash.get(_progress_key, None)
    if sink is not None:
        progress.remove_sink(sink)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Remember the baseline as it is before the run, for the summary's deltas."""
    config = session.config
    if is_worker(config) or not active(config):
        return
    from . import baselines

    try:
        profile = active_profile(config)
        path = profile.resolve(str(profile.baseline))
        run_state(config).baseline_before = baselines.load(path) if path.is_file() else None
    except MedQAError:
        run_state(config).baseline_before = None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """torch is set up (imported, threads applied) before a test that runs pytest in-process
    (``pytester``): such a run drops the modules it imported when it ends, and a torch first
    imported inside it (its first case) segfaulted the next run. Other tests import it themselves."""
    if active(item.config) and {"pytester", "testdir"} & set(getattr(item, "fixturenames", ())):
        from .resources import configure_threads

        configure_threads(run_state(item.config).n_workers)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:  # xdist controller -> worker
    if active(node.config):
        node.workerinput["medqa_run_id"] = run_state(node.config).run_id


def _cases(config: pytest.Config) -> tuple[Any, list[Case]]:
    if not active(config):
        raise pytest.UsageError("medqa-bench: no profile configured: pass --profile NAME|PATH, set MEDQA_PROFILE, "
                                "or add [tool.medqa-bench] profile = \"medqa.toml\" to pyproject.toml")
    try:
        profile = active_profile(config)
    except MedQAError as exc:
        raise pytest.UsageError(str(exc)) from exc
    # Dataset-major order: xdist hands each worker its first cases from the front of the list,
    # so the two workers start on different models and pretrain different bases at once
    # instead of one waiting on the other's base lock.
    return profile, [Case(m, d) for d in profile.datasets for m in profile.models]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "medqa_case" not in metafunc.fixturenames:
        return
    profile, cases = _cases(metafunc.config)
    metafunc.parametrize("medqa_case", [pytest.param(c, id=c.id, marks=_case_marks(profile, c)) for c in cases])


def _case_marks(profile: Any, case: Case) -> list[Any]:
    """``benchmark_case`` on every case, ``slow`` for every case of a slow profile, and an explicit
    skip for a family the profile has no model for."""
    marks = [pytest.mark.benchmark_case] + ([pytest.mark.slow] if profile.slow else [])
    reason = profile.models[case.model].unavailable
    if reason:
        marks.append(pytest.mark.skip(reason=f"{case.id}: {reason}"))
    return marks


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """The configured profile's TOML file, when pytest walks over it, collects its cases."""
    config = parent.config
    if file_path.suffix != ".toml" or not active(config):
        return None
    ref = run_state(config).profile_ref
    target = Path(ref).expanduser() if ref.endswith(".toml") else paths.PROFILES_DIR / f"{ref}.toml"
    try:
        if file_path.resolve() != target.resolve():
            return None
    except OSError:
        return None
    return ProfileFile.from_parent(parent, path=file_path)


class ProfileFile(pytest.File):
    """A profile TOML collected as a test file: one :class:`CaseItem` per model x dataset."""

    def collect(self) -> Any:
        profile, cases = _cases(self.config)
        for case in cases:
            item = CaseItem.from_parent(self, name=case.id, case=case)
            for mark in _case_marks(profile, case):
                item.add_marker(mark)
            yield item


class CaseItem(pytest.Item):
    """One case of a collected profile: runs and judges it like ``medqa_run(case).check()``."""

    def __init__(self, *, case: Case, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case

    def runtest(self) -> None:
        __tracebackhide__ = True
        run_case(self.config, self.case, self.user_properties).check()

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"medqa-bench case {self.case.id}"


@dataclass
class Runner:
    """What every case of a run shares (built once per process, used by the fixtures and by the
    collected items alike): the profile, the pipeline context, the baselines, seeds, run dir."""

    profile: Any
    context: Any
    baseline: BaselineFile | None
    hw_baseline: tuple[str, BaselineFile | None]
    seeds: list[int]
    run_dir: Path
    recording: bool
    judge_resources: bool


_runner_key = pytest.StashKey[Runner]()


def runner(config: pytest.Config) -> Runner:
    if _runner_key in config.stash:
        return config.stash[_runner_key]
    from . import baselines
    from .cache import Cache
    from .pipeline import RunContext
    from .resources import configure_threads, hardware_class
    from .session import parse_seeds

    configure_threads(run_state(config).n_workers)  # torch is first needed here: collection never imports it
    profile = active_profile(config)
    recording = bool(config.getoption("--update-baselines"))
    try:
        seeds = parse_seeds(config.getoption("--seeds"), profile, recording)
    except MedQAError as exc:
        raise pytest.UsageError(str(exc)) from exc
    hw = hardware_class()
    hw_path = profile.hardware_baseline(hw)
    run_dir = run_state(config).run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    made = Runner(
        profile=profile,
        context=RunContext(cache=Cache(cache_dir(config)), use_backend=config.getoption("--use-backend")),
        # None while recording with --update-baselines (then only the controls judge)
        baseline=None if recording else baselines.load(profile.resolve(str(profile.baseline))),
        hw_baseline=(hw, baselines.load(hw_path) if hw_path.is_file() else None),
        seeds=seeds, run_dir=run_dir, recording=recording,
        judge_resources=not config.getoption("--update-resources"),
    )
    config.stash[_runner_key] = made
    return made


@dataclass
class CaseOutcome:
    """One case run and judged: its record (a dict as written to the run directory), its
    verdict, and how the case's test should end (:meth:`check`)."""

    case: Case
    record: CaseRecord
    verdict: Any
    profile: Any
    recording: bool

    @property
    def passed(self) -> bool:
        return not self.verdict.failed and self.verdict.status not in (Status.NO_BASELINE, Status.INCOMPARABLE)

    def check(self) -> None:
        """Fail the calling test as the benchmark does: a recording fails only on its controls;
        a gated run fails on a missing baseline entry, an incomparable baseline or any failing check."""
        __tracebackhide__ = True
        if self.recording:
            if self.verdict.failures:
                pytest.fail(self.verdict.explain(), pytrace=False)
            return
        if self.verdict.status == Status.NO_BASELINE:
            ref = str(self.profile.path)
            cwd = Path.cwd().resolve()
            if Path(ref).is_relative_to(cwd):
                ref = str(Path(ref).relative_to(cwd))
            pytest.fail(f"{self.case.id}: no entry in {self.profile.resolve(str(self.profile.baseline))}; record it with "
                        f"`pytest {ref} --profile {ref} -k {self.case.id} --update-baselines"
                        + (" -m slow" if self.profile.slow else "") + "`", pytrace=False)
        if self.verdict.failed or self.verdict.status == Status.INCOMPARABLE:
            pytest.fail(self.verdict.explain(), pytrace=False)


def run_case(config: pytest.Config, case: Case, properties: list[tuple[str, object]]) -> CaseOutcome:
    """Run one case (train/reuse, generate, score), judge it and record it; ``properties`` (the
    test item's ``user_properties``) gets the record path and the headline numbers (JUnit XML)."""
    from . import session

    try:
        run = runner(config)
    except MedQAError as exc:  # e.g. no baseline file: one line saying what to do
        pytest.fail(f"{case.id}: {exc}", pytrace=False)
    spec = run.profile.models[case.model]
    if spec.needs_cuda and run.context.device != "cuda":
        pytest.skip(f"{case.id}: profile {run.profile.name!r} runs {spec.hub_id} and needs a CUDA GPU; none found")
    from .resources import in_case

    try:
        with in_case():  # sibling workers count this one's load as the run's own while it runs a case
            record, verdict = session.run_and_judge(run.profile, case.model, case.dataset, run.context, run.seeds,
                                                    run.baseline, run.hw_baseline, run.run_dir,
                                                    judge_resources=run.judge_resources)
    except Exception as exc:  # the case still ends as a record (status error) for history, summary and alerts
        err = session.error_record(run.profile, case.model, case.dataset, run.run_dir, f"{type(exc).__name__}: {exc}")
        properties.append((RECORD_KEY, err["_path"]))
        if "_unwritten" in err:  # e.g. a full disk: the record reaches the session end in the report instead
            properties.append((INLINE_RECORD_KEY, json.dumps({k: v for k, v in err.items() if k != "_path"})))
        if isinstance(exc, MedQAError):  # bad input or config: the message says what to fix, no traceback
            pytest.fail(f"{case.id}: {exc}", pytrace=False)
        raise
    properties.append((RECORD_KEY, record["_path"]))
    for name, value in {**record["metrics"], **{f"base_{k}": v for k, v in record["base_metrics"].items()},
                        **record["resources"], "cached_train": record["cached"]["train"],
                        "verdict": verdict.status}.items():
        properties.append((name, value))
    return CaseOutcome(case, record, verdict, run.profile, run.recording)


@pytest.fixture(scope="session")
def medqa_profile(request: pytest.FixtureRequest) -> Any:
    """The active profile (``--set`` and ``--baseline`` applied)."""
    return runner(request.config).profile


@pytest.fixture(scope="session")
def medqa_context(request: pytest.FixtureRequest) -> Any:
    return runner(request.config).context


@pytest.fixture(scope="session")
def medqa_baseline(request: pytest.FixtureRequest) -> BaselineFile | None:
    """The baseline file, or None while recording with --update-baselines (then only the controls judge)."""
    return runner(request.config).baseline


@pytest.fixture(scope="session")
def medqa_seeds(request: pytest.FixtureRequest) -> list[int]:
    """The run seeds of every case (--seeds)."""
    return runner(request.config).seeds


@pytest.fixture(scope="session")
def medqa_hw_baseline(request: pytest.FixtureRequest) -> tuple[str, BaselineFile | None]:
    """(this machine's hardware class, its resource baseline file for the profile or None)."""
    return runner(request.config).hw_baseline


@pytest.fixture(scope="session")
def medqa_run_dir(request: pytest.FixtureRequest) -> Path:
    return runner(request.config).run_dir


@pytest.fixture
def medqa_run(request: pytest.FixtureRequest) -> Callable[[Case], CaseOutcome]:
    """Run and judge a case of the active profile from your own test::

        def test_clinic(medqa_case, medqa_run):
            outcome = medqa_run(medqa_case)   # fine-tune (or reuse), generate, score, judge
            outcome.check()                   # fail as the benchmark does; or assert on
                                              # outcome.verdict / outcome.record yourself

    The case is recorded like a collected one (summary, history, baselines, alerts)."""
    def run(case: Case) -> CaseOutcome:
        __tracebackhide__ = True
        return run_case(request.config, case, request.node.user_properties)

    return run


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if is_worker(config) or not active(config):
        return
    empty = judged_nothing(config)
    if empty:
        terminalreporter.write_line(empty, red=True, bold=True)
    records = run_state(config).records
    if not records:
        return
    from .results.summary import plain_table

    tr = terminalreporter
    base = run_state(config).baseline_before  # deltas against the file as it was before the run
    try:
        profile = active_profile(config)
        tr.section(f"medqa-bench summary (profile {profile.name}; delta vs {profile.resolve(str(profile.baseline)).name})")
        tr.write_line(plain_table(records, base))
    except Exception as exc:  # the summary is a view; the verdict and exit code are already set
        tr.write_line(f"medqa-bench: summary table not shown: {type(exc).__name__}: {exc}", red=True)
    tr.write_line(f"records and summary.md: {run_state(config).run_dir}")
    for line in run_state(config).finish_lines:
        tr.write_line(line, red=line.startswith("medqa-bench: ERROR"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    finish_session(session, exitstatus)
