"""Content-addressed store for pretrained bases, adapters, answers and scores.

Key = sha256 of the canonical JSON of every input that changes the artefact. An entry is a
directory ``<root>/<kind>/<key[:2]>/<key>/`` holding the artefact plus ``meta.json`` (sealed
with its own sha256, and recording the size and sha256 of every file of the entry); it is built
in a temporary sibling directory and renamed into place only when complete, so no reader ever
sees a half-written entry.

Building: under a per-key file lock, so pytest-xdist workers build an entry once. The lock is
not what keeps the cache sound: a lock file deleted while held lets a second process in, so

- every builder's temporary directory is its own and names its owner
  (``.<key[:12]>-<host>-<pid>-<start>-<random>``); another process deletes it only when it is
  provably stale (its owner, on this host, is no longer running), and waits while its owner is
  alive (the owner is building the same entry);
- the finished directory is renamed into place atomically, and a builder that finds a sound
  entry there already (another process won) discards its own directory and serves that one;
- a damaged entry is first renamed aside (never deleted in place), and put back if it turns out
  sound.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from .errors import CacheError

log = logging.getLogger(__name__)

META = "meta.json"
META_DIGEST = "meta_sha256"  # content_key of the rest of meta.json, written with it
#: what every meta.json holds besides its seal: an entry without them (e.g. ``{}``, or one stripped
#: of its file checksums) is damaged and rebuilt, never served
META_FIELDS = ("kind", "key", "inputs", "files")
#: seconds between looks at a live builder of the key this process waits for
WAIT_POLL_S = 0.2


def canonical_json(payload: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, floats by repr; rejects NaN/inf."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def content_key(payload: Any) -> str:
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def dir_digest(path: Path) -> str:
    """Digest of every file under a directory (relative names + contents)."""
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(p.relative_to(path).as_posix().encode())
        h.update(file_digest(p).encode())
    return h.hexdigest()


#: Modules that only judge, store or show results: they shape no cached artefact, so editing them
#: keeps the cache warm. Every other module of the package is in every stage key.
POST_RUN_MODULES = frozenset({
    "baselines.py", "cli.py", "pytest_plugin.py", "session.py", "scaffold.py", "progress.py",
})
#: Whole subpackages of that kind: results/ (summary, report, history, trend, alerts, merge), plugin/ (the
#: pytest plugin's parts) and gate/ (judging).
POST_RUN_PACKAGES = ("results/", "plugin/", "gate/")


@functools.cache
def code_digest() -> str:
    """Digest of every medqa_core source file that can shape an artefact (all but
    :data:`POST_RUN_MODULES`): a change anywhere in the pipeline, trainer, prompts, generation,
    models or metrics gives new keys, so a cache never serves results built by other code."""
    pkg = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted(pkg.rglob("*.py")):
        rel = p.relative_to(pkg).as_posix()
        if rel in POST_RUN_MODULES or rel.startswith(POST_RUN_PACKAGES):
            continue
        h.update(rel.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Entry:
    key: str
    path: Path
    meta: dict[str, Any]
    built: bool  # True when this call built it, False when it was already cached


class Cache:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "locks").mkdir(exist_ok=True)
        except OSError as exc:
            raise CacheError(f"--cache-dir {self.root}: cannot create it ({exc}); pass a writable directory") from exc

    def path_for(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / key

    def entry(self, kind: str, key: str, required: tuple[str, ...] = ()) -> Entry | None:
        """The entry of ``key`` (``content_key`` of its payload) if it is there and sound
        (meta.json sealed, with :data:`META_FIELDS` and ``required``, and every file as
        recorded), else None."""
        path = self.path_for(kind, key)
        meta, bad = _inspect(path, kind, key, required)
        return None if meta is None or bad else Entry(key, path, meta, built=False)

    def get_or_build(
        self,
        kind: str,
        payload: Any,
        build: Callable[[Path], dict[str, Any] | None],
        required: tuple[str, ...] = (),
    ) -> Entry:
        """Return the entry for ``payload``, calling ``build(tmp_dir)`` once if it is missing.

        ``build`` writes its files into ``tmp_dir`` and returns extra metadata (JSON-able);
        ``required`` names the metadata the caller reads (an entry whose meta.json lacks one is
        damaged and rebuilt). If ``build`` raises, nothing is left behind and the error propagates.
        """
        key = content_key(payload)
        hit = self.entry(kind, key, required)
        if hit is not None:
            return hit
        path = self.path_for(kind, key)
        (self.root / "locks").mkdir(exist_ok=True)
        with FileLock(str(self.root / "locks" / f"{kind}-{key}.lock")):
            waited = False
            while True:
                found = self._settle(kind, key, path, required)  # another worker may have built it meanwhile
                if found is not None:
                    return found
                live = _sweep(path.parent, key)
                if not live:
                    break
                # a live builder of this key that does not hold the lock (its lock file was deleted
                # while it held it): wait for it rather than build the same entry beside it
                if not waited:
                    log.warning("cache: %s/%s is being built by another process (%s) outside the lock; waiting for it",
                                kind, key[:12], live[0].name)
                    waited = True
                time.sleep(WAIT_POLL_S)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(key), dir=path.parent))
            _BUILDING.add(tmp)
            try:
                extra = build(tmp) or {}
                meta = {"kind": kind, "key": key, "inputs": payload, **extra, "files": _manifest(tmp)}
                _check_finite(meta, f"cache entry {kind}/{key}")
                sealed = {**meta, META_DIGEST: content_key(meta)}  # meta.json checks itself too
                (tmp / META).write_text(json.dumps(sealed, indent=1, sort_keys=True, allow_nan=False))
                tmp.chmod(0o755)  # mkdtemp makes it private; a shared cache must be readable
                return self._publish(kind, key, tmp, path, meta, required)
            finally:
                _BUILDING.discard(tmp)
                if tmp.exists():  # failed, or discarded for another builder's entry
                    shutil.rmtree(tmp, ignore_errors=True)

    def _settle(self, kind: str, key: str, path: Path, required: tuple[str, ...]) -> Entry | None:
        """The sound entry at ``path``, or None after moving a damaged one (or a leftover
        without meta.json) out of the way, with one warning naming it."""
        meta, damage = _inspect(path, kind, key, required)
        if meta is not None and not damage:
            return Entry(key, path, meta, built=False)
        if damage:
            log.warning("cache: entry %s/%s is damaged (%s); rebuilding it", kind, key[:12], damage)
        if path.exists() or path.is_symlink():
            return self._discard(kind, key, path, required)
        return None

    def _discard(self, kind: str, key: str, path: Path, required: tuple[str, ...]) -> Entry | None:
        """Move what is at ``path`` aside (atomically) and delete it, unless it turns out to be a
        sound entry that another builder renamed into place meanwhile: that one goes back and is
        returned."""
        aside = path.parent / f"{_tmp_prefix(key)}{os.urandom(4).hex()}.old"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return None
        meta, damage = _inspect(aside, kind, key, required)
        if meta is not None and not damage:
            try:
                os.rename(aside, path)
                return Entry(key, path, meta, built=False)
            except OSError:  # yet another entry is there now: _publish's caller looks again
                pass
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink(missing_ok=True)
        return None

    def _publish(self, kind: str, key: str, tmp: Path, path: Path, meta: dict[str, Any],
                 required: tuple[str, ...]) -> Entry:
        """Rename the finished ``tmp`` to ``path`` atomically. A rename never replaces a non-empty
        directory: if another builder's sound entry is there, it wins and ``tmp`` is discarded."""
        for _ in range(5):
            try:
                os.rename(tmp, path)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) and not path.exists():
                    raise
            else:
                log.info("cache: built %s/%s", kind, key[:12])
                return Entry(key, path, meta, built=True)
            other = self._settle(kind, key, path, required)
            if other is not None:
                log.warning("cache: %s/%s was built by another process meanwhile; serving that entry", kind, key[:12])
                shutil.rmtree(tmp, ignore_errors=True)
                return other
        raise CacheError(f"cache entry {kind}/{key}: could not move the built entry into place at {path}")


# ------------------------------------------------------------------ builders' temporary directories

#: the temporary directories this process is building into now
_BUILDING: set[Path] = set()
_TMP_NAME = re.compile(r"\.(?P<key>[0-9a-f]{12})-(?P<host>[0-9a-f]{12})-(?P<pid>\d+)-(?P<start>\d+)-")


@functools.cache
def _host_tag() -> str:
    """This machine as the processes on it see each other: the host name and (Linux) the PID
    namespace, so a container sharing the cache with another PID space is another host."""
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    return hashlib.sha256(f"{socket.gethostname()}|{pidns}".encode()).hexdigest()[:12]


def _started(pid: int) -> int | None:
    """When process ``pid`` started, in a unit fixed for its life (Linux: clock ticks since boot,
    from /proc; elsewhere whole seconds, from psutil); None when no such process runs (a zombie,
    killed but not yet reaped, counts as gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
    except (OSError, ValueError, IndexError):
        pass
    import psutil

    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else int(proc.create_time())
    except (psutil.Error, OSError):
        return None


def _tmp_prefix(key: str) -> str:
    pid = os.getpid()
    return f".{key[:12]}-{_host_tag()}-{pid}-{_started(pid) or 0}-"


def _owner_alive(tmp: Path) -> bool | None:
    """True: the directory's builder is running (on this host); False: it provably is not (it
    died, or the name is no builder's); None: another host's builder, which cannot be checked."""
    m = _TMP_NAME.match(tmp.name)
    if m is None:
        return False
    if m["host"] != _host_tag():
        return None
    pid, start = int(m["pid"]), int(m["start"])
    if pid == os.getpid() and start == (_started(pid) or 0):
        return tmp in _BUILDING  # ours: live only while this process is building into it
    now = _started(pid)
    return now is not None and now == start


def _sweep(parent: Path, key: str) -> list[Path]:
    """Remove the stale temporary directories of ``key`` (their builder is gone); return those
    of builders on this host that are still running."""
    live: list[Path] = []
    for tmp in sorted(parent.glob(f".{key[:12]}-*")) if parent.is_dir() else []:
        alive = _owner_alive(tmp)
        if alive:
            live.append(tmp)
        elif alive is False:
            log.info("cache: removing %s, left by a build that is no longer running", tmp.name)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log.debug("cache: leaving %s alone: another host's build", tmp.name)
    return live


# ------------------------------------------------------------------ checking an entry


def _inspect(path: Path, kind: str, key: str, required: tuple[str, ...] = ()) -> tuple[dict[str, Any] | None, str]:
    """(meta, '') for a sound entry; (None, '') when there is no meta.json; (meta or None, what
    is wrong) for a damaged one. Never raises for what is on disk."""
    meta, bad = _read_meta(path)
    if meta is None or bad:
        return None, bad
    return meta, _meta_problem(meta, kind, key, required) or _damage(path, meta)


def _read_meta(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(meta, '') for a readable meta.json sealed with the digest of its content, (None, '') when
    there is none, (None, what is wrong) when it cannot be read, has no seal or no longer matches
    it (the entry is damaged)."""
    f = path / META
    if not f.is_file():
        return None, ""
    try:
        meta = json.loads(f.read_bytes().decode("utf-8"))
        if not isinstance(meta, dict):
            return None, f"{META} is not a JSON object"
        claimed = meta.pop(META_DIGEST, None)
        if claimed is None:
            return None, f"{META} has no {META_DIGEST} seal"
        if claimed != content_key(meta):
            return None, f"{META} does not match its recorded sha256"
        return meta, ""
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON, NaN
        return None, f"{META} is unreadable ({type(exc).__name__})"


def _meta_problem(meta: dict[str, Any], kind: str, key: str, required: tuple[str, ...]) -> str:
    missing = [k for k in (*META_FIELDS, *required) if k not in meta]
    if missing:
        return f"{META} lacks {', '.join(missing)}"
    if meta["kind"] != kind or meta["key"] != key:
        return f"{META} is for {meta['kind']}/{str(meta['key'])[:12]}"
    try:
        if content_key(meta["inputs"]) != key:
            return f"{META} inputs do not hash to the entry's key"
    except (TypeError, ValueError):
        return f"{META} inputs are not canonical JSON"
    files = meta["files"]
    if not isinstance(files, dict) or not all(
            isinstance(v, list) and len(v) == 2 and isinstance(v[0], int) and isinstance(v[1], str)
            for v in files.values()):
        return f"{META} files is not a manifest of [size, sha256]"
    return ""


def _files(root: Path) -> list[Path]:
    """Every file of an entry directory but its meta.json."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p != root / META)


def _manifest(root: Path) -> dict[str, list[Any]]:
    """[size, sha256] of every file of an entry (its meta.json aside), recorded when it is built."""
    return {p.relative_to(root).as_posix(): [p.stat().st_size, file_digest(p)] for p in _files(root)}


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> digest, per process


def _damage(path: Path, meta: dict[str, Any]) -> str:
    """'' when the entry holds exactly the files of its manifest, each with its recorded size and
    digest, else what is wrong (a file missing, changed, or not in the manifest)."""
    files: dict[str, list[Any]] = meta["files"]
    on_disk = {p.relative_to(path).as_posix() for p in _files(path)}
    extra = sorted(on_disk - set(files))
    if extra:
        return f"{extra[0]} is not in its checksum manifest"
    for rel, (size, digest) in files.items():
        f = path / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            return f"manifest names {rel!r} outside the entry"
        try:
            st = f.stat()
        except OSError:
            return f"{rel} is missing"
        if st.st_size != size:
            return f"{rel} has {st.st_size} bytes, {size} recorded"
        memo = (str(f), st.st_size, st.st_mtime_ns)
        if _VERIFIED.get(memo) != digest:
            if file_digest(f) != digest:
                return f"{rel} does not match its recorded sha256"
            _VERIFIED[memo] = digest
    return ""


def _check_finite(obj: Any, where: str) -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise CacheError(f"{where}: refusing to store a non-finite number")
    if isinstance(obj, dict):
        for v in obj.values():
            _check_finite(v, where)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_finite(v, where)
