"""Run groups: several stored runs that form one logical run, and how a group reads as one run.

Run groups (``medqa-bench merge``, docs/multi-runner.md): the runs of one night that ran on
several machines (one matrix job per model family) are imported under one group id
(:meth:`History.merge <medqa_core.results.history.store.History.merge>`; the ``run_groups``
table). Every run keeps its own row, records, provenance and hardware class; the group only says
which runs form one logical run. Listing, ``latest``, reports and trends show a group as one run
(:func:`fold`); a run that belongs to a group is not listed on its own. Within a group, the
newest attempt of a case (by recorded time, then storage order) stands for the group
(:func:`newest_attempts`, :func:`newest_per_label`). Retention counts a group as one run
(:func:`retired`).

These are the rules only; :mod:`.store` reads the rows and applies them. Nothing here opens or
writes the history.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

R = TypeVar("R")


@dataclass(frozen=True)
class RunRow:
    """One stored run, or one run group shown as a run (``members`` = its runs' ids; then
    ``seq`` is the newest member's, ``created`` the oldest member's, and ``git_sha`` and
    ``hardware_class`` list the members' distinct values joined by ``+``)."""

    seq: int
    run_id: str
    created: float
    profile: str
    git_sha: str | None
    hardware_class: str | None
    members: tuple[str, ...] = ()

    @property
    def is_group(self) -> bool:
        return bool(self.members)


#: SQL (in a query over ``runs``): the group a stored run is listed under, its first group if it
#: is in several, NULL when it is in none
FIRST_GROUP = "(SELECT g.group_id FROM run_groups g WHERE g.run_id = runs.run_id ORDER BY g.added, g.rowid LIMIT 1)"


def read_groups(con: sqlite3.Connection) -> dict[str, list[str]]:
    """group id -> member run ids (in the order they joined)."""
    out: dict[str, list[str]] = {}
    for gid, rid in con.execute("SELECT group_id, run_id FROM run_groups ORDER BY added, rowid"):
        out.setdefault(gid, []).append(rid)
    return out


def fold(rows: list[RunRow], groups: dict[str, list[str]]) -> list[RunRow]:
    """Stored runs (``rows``, in storage order) as listed: a run group is one row (at its newest
    member's place) and its member runs are not listed on their own. A member that is not in
    ``rows`` (a run of another profile) is left out of its group; a group left with no member is
    not listed."""
    by_id = {r.run_id: r for r in rows}
    grouped_ids = {rid for members in groups.values() for rid in members}
    out = [r for r in rows if r.run_id not in grouped_ids]
    for gid, members in groups.items():
        mem = [by_id[m] for m in members if m in by_id]
        if not mem:
            continue
        mem.sort(key=lambda r: r.seq)
        out.append(
            RunRow(
                seq=mem[-1].seq,
                run_id=gid,
                created=min(r.created for r in mem),
                profile=mem[0].profile,
                git_sha=_joined(r.git_sha for r in mem),
                hardware_class=_joined(r.hardware_class for r in mem),
                members=tuple(r.run_id for r in mem),
            )
        )
    return sorted(out, key=lambda r: (r.seq, r.is_group, r.run_id))


def newest_attempts(rows: Iterable[tuple[str, R]]) -> list[R]:
    """One row per case of a group, in case id order: ``rows`` are (case id, row) of every
    attempt in the order they ran (recorded time, then storage order), so a later attempt of a
    case replaces an earlier one."""
    newest = {cid: row for cid, row in rows}
    return [newest[cid] for cid in sorted(newest)]


def newest_per_label(rows: Iterable[tuple[str, tuple[float, int], R]]) -> list[R]:
    """One row per label from (label, (recorded time, storage seq), row) in storage order, the
    label being a run id or the id of the group the run is listed under: where a label comes
    again (one case in several runs of a group) the row with the greater key stands for it (the
    later row on a tie), at the place of the label's last row."""
    out: list[R | None] = []
    where_at: dict[str, tuple[int, tuple[float, int]]] = {}
    for label, key, row in rows:
        if label in where_at:  # the same case again in one group: the newest attempt stands for it
            i, old_key = where_at[label]
            old = out[i]
            out[i] = None
            if old_key > key and old is not None:
                row, key = old, old_key
        where_at[label] = (len(out), key)
        out.append(row)
    return [row for row in out if row is not None]


def retired(
    runs: dict[str, tuple[int, float, str]],
    groups: dict[str, list[str]],
    keep_runs: int | None,
    keep_days: float | None,
    now: float,
) -> tuple[list[str], list[str]]:
    """What retention lets go, as (group ids, run ids in storage order), from every stored run
    (run id -> (seq, created, profile)) and ``groups``: per profile the units as listed (a group at
    its newest member's place and time, or a run in no group), newest first, past the newest
    ``keep_runs`` or older than ``keep_days`` days before ``now``. A group goes as a whole; a run
    that is also in a kept group stays."""
    in_group = {rid for members in groups.values() for rid in members}
    # units as listed: a group (its newest member's place and time) or a run in no group
    units: list[tuple[str, int, float, str | None, list[str]]] = []
    for gid, members in groups.items():
        mem = [m for m in members if m in runs]
        if mem:
            units.append((runs[mem[0]][2], max(runs[m][0] for m in mem), max(runs[m][1] for m in mem), gid, mem))
    units += [(prof, seq, created, None, [rid]) for rid, (seq, created, prof) in runs.items() if rid not in in_group]
    cutoff = now - keep_days * 86400.0 if keep_days is not None else None
    kept_runs: set[str] = set()
    gone: list[tuple[str | None, list[str]]] = []
    per_profile: dict[str, int] = {}
    for prof, _, created, group_id, mem in sorted(units, key=lambda u: -u[1]):  # newest first
        rank = per_profile[prof] = per_profile.get(prof, 0) + 1
        if (keep_runs is not None and rank > keep_runs) or (cutoff is not None and created < cutoff):
            gone.append((group_id, mem))
        else:
            kept_runs.update(mem)
    gone_groups = [gid for gid, _ in gone if gid is not None]
    gone_runs = sorted({m for _, mem in gone for m in mem} - kept_runs, key=lambda r: runs[r][0])
    return gone_groups, gone_runs


def _joined(values: Iterable[str | None]) -> str | None:
    """Distinct non-empty values joined by ``+`` (sorted), None when there is none."""
    vals = sorted({v for v in values if v})
    return "+".join(vals) if vals else None
