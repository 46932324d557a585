"""PeakMemory on CPU sees memory allocated and freed inside the block (no sampling needed)."""
from __future__ import annotations

from medqa_core.resources import PeakMemory


def test_cpu_peak_covers_a_short_lived_allocation():
    with PeakMemory("cpu") as mem:
        block = bytearray(120 * 2**20)
        block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page
        del block
    assert 100 < mem.peak_mib < 400
    assert mem.peak_abs_mib >= mem.peak_mib


def test_cpu_peak_of_an_idle_block_is_small():
    with PeakMemory("cpu") as mem:
        pass
    assert 0 <= mem.peak_mib < 20
