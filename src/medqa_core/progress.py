"""Live progress of the long stages: training steps (with the loss), generation and scoring batches.

Library code reports through a :class:`Tracker` and never prints. Whoever wants to show progress
registers a *sink* (a callable taking an :class:`Event`); the pytest plugin registers one that
writes through pytest's terminal reporter when progress is wanted (``-v`` on a terminal, or
``--progress on``; see ``pytest_plugin.py``). Every event that is emitted is also logged at DEBUG
on this module's logger.

Updates are throttled: a tracker emits its first update, its last one (``done == total``) and
otherwise at most one every :func:`interval` seconds (``MEDQA_PROGRESS_INTERVAL``, default 5).
Without a sink an update costs one check, and values passed as callables (``loss=lambda:
float(t)``, which would synchronise a GPU) are only evaluated for an update that is emitted.

Example (what the trainer does)::

    tracker = Tracker("train", total=200, unit="step")
    for step in range(1, 201):
        ...
        tracker.update(step, loss=lambda: float(loss))
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 5.0
ENV_INTERVAL = "MEDQA_PROGRESS_INTERVAL"


def fmt_seconds(s: float) -> str:
    """``7s``, ``2m05s``, ``1h02m``."""
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass(frozen=True)
class Event:
    stage: str  # "train", "generate tuned", "score", ...
    done: int
    total: int | None
    unit: str  # "step", "question", "pair"
    elapsed: float  # seconds since the tracker started
    info: dict[str, Any] = field(default_factory=dict)  # e.g. {"loss": 2.31}

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far; None before the first unit or without a total."""
        if self.total is None or self.done <= 0 or self.elapsed <= 0:
            return None
        return max(0.0, self.elapsed / self.done * (self.total - self.done))

    def line(self) -> str:
        """``train: step 40/200 (20%), loss 2.3140, 12s elapsed, ETA 48s``."""
        count = f"{self.unit} {self.done}" + (f"/{self.total} ({100 * self.done / self.total:.0f}%)" if self.total else "")
        extras = [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in self.info.items()]
        timing = [f"{fmt_seconds(self.elapsed)} elapsed"]
        if self.finished:
            timing = [f"done in {fmt_seconds(self.elapsed)}"]
        elif self.eta is not None:
            timing.append(f"ETA {fmt_seconds(self.eta)}")
        return f"{self.stage}: " + ", ".join([count, *extras, *timing])


Sink = Callable[[Event], None]
_sinks: list[Sink] = []


def add_sink(sink: Sink) -> None:
    """Send every emitted event to ``sink`` (until :func:`remove_sink`)."""
    _sinks.append(sink)


def remove_sink(sink: Sink) -> None:
    if sink in _sinks:
        _sinks.remove(sink)


def active() -> bool:
    """Whether anyone shows progress (trackers skip all work otherwise)."""
    return bool(_sinks)


def interval() -> float:
    """Seconds between two updates of one tracker (``MEDQA_PROGRESS_INTERVAL``, default 5)."""
    raw = os.environ.get(ENV_INTERVAL)
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_INTERVAL
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %s", ENV_INTERVAL, raw, DEFAULT_INTERVAL)
        return DEFAULT_INTERVAL


class Tracker:
    """Progress of one stage: ``update(done, **info)`` after each step or batch."""

    def __init__(self, stage: str, total: int | None, unit: str, clock: Callable[[], float] = time.monotonic,
                 every: float | None = None) -> None:
        self.stage, self.total, self.unit, self.clock = stage, total, unit, clock
        self.every = interval() if every is None else every
        self.start = clock()
        self._last: float | None = None  # when the last update was emitted
        self.emitted = 0

    def due(self, done: int) -> bool:
        """Would an update at ``done`` be emitted now?"""
        if not _sinks:
            return False
        if self._last is None or (self.total is not None and done >= self.total):
            return True
        return self.clock() - self._last >= self.every

    def update(self, done: int, **info: Any) -> bool:
        """Report ``done`` units; returns whether the update was emitted (throttling)."""
        if not self.due(done):
            return False
        now = self.clock()
        values = {k: v() if callable(v) else v for k, v in info.items()}
        event = Event(self.stage, done, self.total, self.unit, now - self.start, values)
        self._last = now
        self.emitted += 1
        log.debug("%s", event.line())
        for sink in list(_sinks):
            try:
                sink(event)
            except Exception:  # a broken display must never break a run
                log.warning("progress sink %r failed", sink, exc_info=True)
        return True




# ---- display in pytest (registered by pytest_plugin.py) ------------------------------------

PROGRESS_MODES = ("auto", "on", "off")


def wanted(mode: str, verbosity: int, isatty: bool, env: Mapping[str, str] | None = None) -> bool:
    """Whether the pytest run shows progress lines.

    ``off``: never. ``-q`` (verbosity < 0): never. ``on``: always otherwise (CI logs, pipes).
    ``auto`` (the default): with ``-v`` or more, on a terminal, outside CI (``CI`` unset).
    """
    env = os.environ if env is None else env
    if mode == "off" or verbosity < 0:
        return False
    if mode == "on":
        return True
    return verbosity >= 1 and isatty and env.get("CI", "").lower() in ("", "0", "false")


class TerminalSink:
    """Writes each event as one line through pytest's terminal reporter, outside output capture
    (as pytest's live logging does), indented under the running test's line."""

    def __init__(self, config: Any) -> None:
        self.config = config

    def __call__(self, event: Event) -> None:
        from contextlib import nullcontext

        plugins = self.config.pluginmanager
        tr = plugins.get_plugin("terminalreporter")
        if tr is None:
            return
        capman = plugins.get_plugin("capturemanager")
        with capman.global_and_fixture_disabled() if capman is not None else nullcontext():
            tr.ensure_newline()
            tr.write_line(f"    {event.line()}", cyan=True)


__all__ = ["DEFAULT_INTERVAL", "ENV_INTERVAL", "PROGRESS_MODES", "Event", "TerminalSink", "Tracker", "active", "add_sink",
           "fmt_seconds", "interval", "remove_sink", "wanted"]
