"""PeakMemory on CPU sees memory allocated and freed inside the block (no sampling needed)."""
from __future__ import annotations

from medqa_core.resources import PeakMemory

PROBE = """
from medqa_core.resources import PeakMemory
with PeakMemory("cpu") as mem:
    block = bytearray(120 * 2**20)
    block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page
    del block
print(mem.peak_mib, mem.peak_abs_mib)
"""


def test_cpu_peak_covers_a_short_lived_allocation():
    # In a fresh process: in a long-lived test worker the allocator may serve the block from pages
    # an earlier test left resident (glibc raises its mmap threshold after a large free), so the
    # block needs no new memory and the delta is rightly 0 there.
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
    peak, peak_abs = float(out[0]), float(out[1])
    assert 100 < peak < 400
    assert peak_abs >= peak


def test_cpu_peak_of_an_idle_block_is_small():
    with PeakMemory("cpu") as mem:
        pass
    assert 0 <= mem.peak_mib < 20


def test_a_sibling_worker_is_ours_only_while_it_runs_a_case(monkeypatch, tmp_path):
    """Under xdist a sibling worker running a benchmark case shares the cores as in the baseline;
    one running other tests is a neighbour (its load can make a time check unjudged)."""
    import os

    from medqa_core import resources

    class P:
        def __init__(self, pid, parent=None, kids=()):
            self.pid, self._parent, self._kids = pid, parent, list(kids)

        def parent(self):
            return self._parent

        def children(self):
            return self._kids

    me = P(os.getpid())
    sib = P(999_999)
    ctl = P(os.getppid(), kids=[me, sib])
    me._parent = ctl
    monkeypatch.setattr(resources.psutil, "Process", lambda: me)
    monkeypatch.setattr(resources, "_case_marks", lambda pid: tmp_path / f"marks-{pid}")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    assert [p.pid for p in resources._run_tree()] == [me.pid, ctl.pid]
    (tmp_path / f"marks-{ctl.pid}").mkdir()
    (tmp_path / f"marks-{ctl.pid}" / str(sib.pid)).touch()
    assert [p.pid for p in resources._run_tree()] == [me.pid, ctl.pid, sib.pid]
    with resources.in_case():  # this worker's own mark, removed after the case
        assert (tmp_path / f"marks-{os.getppid()}" / str(os.getpid())).exists()
    assert not (tmp_path / f"marks-{os.getppid()}" / str(os.getpid())).exists()


def test_cpu_identity_names_vendor_model_and_speed_flags(monkeypatch, tmp_path):
    """The identity a time check compares is read from the first processor's block of
    /proc/cpuinfo: name, vendor, family/model and the instruction sets the kernels use."""
    import builtins

    from medqa_core import resources

    info = tmp_path / "cpuinfo"
    block = ("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
             "model name\t: Intel Xeon Platinum 8480\nflags\t\t: fpu avx2 avx512f amx_tile amx_bf16\n")
    info.write_text(block + "\n" + block.replace("processor\t: 0", "processor\t: 1").replace("Intel", "Other"))
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: real_open(info if p == "/proc/cpuinfo" else p, *a, **k))
    resources.cpu_identity.cache_clear()
    try:
        assert resources.cpu_identity() == "Intel Xeon Platinum 8480 [GenuineIntel 6/143; avx2+avx512f+amx_tile+amx_bf16]"
        info.write_text(block.replace("avx512f ", ""))
        resources.cpu_identity.cache_clear()
        assert resources.cpu_identity().endswith("; avx2+amx_tile+amx_bf16]")
    finally:
        resources.cpu_identity.cache_clear()
