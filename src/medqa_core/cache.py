"""Content-addressed store for pretrained bases, adapters, answers and scores.

Key = sha256 of the canonical JSON of every input that changes the artefact. An entry is a
directory ``<root>/<kind>/<key[:2]>/<key>/`` holding the artefact plus ``meta.json``; it is
built in a temporary sibling directory and renamed into place only when complete, under a
per-key file lock, so pytest-xdist workers never build the same entry twice and never see a
half-written one.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from .errors import CacheError

log = logging.getLogger(__name__)

META = "meta.json"
META_DIGEST = "meta_sha256"  # content_key of the rest of meta.json, written with it


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
    "gate.py", "baselines.py", "cli.py", "pytest_plugin.py", "session.py", "scaffold.py", "progress.py",
})
#: Whole subpackages of that kind: everything under results/ (summary, report, history, trend, alerts, merge).
POST_RUN_PACKAGES = ("results/",)


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

    def entry(self, kind: str, key: str) -> Entry | None:
        """The entry of ``key`` (``content_key`` of its payload) if it is there and sound
        (meta.json and every file as recorded), else None."""
        path = self.path_for(kind, key)
        meta, bad = _read_meta(path)
        return None if meta is None or bad or _damage(path, meta) else Entry(key, path, meta, built=False)

    def get_or_build(
        self,
        kind: str,
        payload: Any,
        build: Callable[[Path], dict[str, Any] | None],
    ) -> Entry:
        """Return the entry for ``payload``, calling ``build(tmp_dir)`` once if it is missing.

        ``build`` writes its files into ``tmp_dir`` and returns extra metadata (JSON-able).
        If it raises, nothing is left behind and the error propagates.
        """
        key = content_key(payload)
        hit = self.entry(kind, key)
        if hit is not None:
            return hit
        path = self.path_for(kind, key)
        with FileLock(str(self.root / "locks" / f"{kind}-{key}.lock")):
            meta, damage = _read_meta(path)  # another worker may have built it while we waited
            if meta is not None or damage:
                damage = damage or _damage(path, meta or {})
                if not damage:
                    return Entry(key, path, meta or {}, built=False)
                log.warning("cache: entry %s/%s is damaged (%s); rebuilding it", kind, key[:12], damage)
                shutil.rmtree(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            for orphan in path.parent.glob(f".{key[:12]}-*"):  # killed builds of this key (we hold its lock)
                shutil.rmtree(orphan, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=path.parent))
            try:
                extra = build(tmp) or {}
                meta = {"kind": kind, "key": key, "inputs": payload, **extra, "files": _manifest(tmp)}
                _check_finite(meta, f"cache entry {kind}/{key}")
                sealed = {**meta, META_DIGEST: content_key(meta)}  # meta.json checks itself too
                (tmp / META).write_text(json.dumps(sealed, indent=1, sort_keys=True, allow_nan=False))
                tmp.chmod(0o755)  # mkdtemp makes it private; a shared cache must be readable
                if path.exists():  # a corrupt leftover without meta.json: replace it
                    shutil.rmtree(path)
                os.replace(tmp, path)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            log.info("cache: built %s/%s", kind, key[:12])
            return Entry(key, path, meta, built=True)


def _read_meta(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(meta, '') for a sound meta.json, (None, '') when there is none, (None, what is wrong) when
    it cannot be read or no longer matches the digest it was sealed with (the entry is damaged).
    Entries from before the seal are trusted as they read."""
    f = path / META
    if not f.is_file():
        return None, ""
    try:
        meta = json.loads(f.read_bytes().decode("utf-8"))
        if not isinstance(meta, dict):
            return None, f"{META} is not a JSON object"
        claimed = meta.pop(META_DIGEST, None)
        if claimed is not None and claimed != content_key(meta):
            return None, f"{META} does not match its recorded sha256"
        return meta, ""
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON, NaN
        return None, f"{META} is unreadable ({type(exc).__name__})"


def _manifest(root: Path) -> dict[str, list[Any]]:
    """[size, sha256] of every file of an entry (its meta.json aside), recorded when it is built."""
    return {p.relative_to(root).as_posix(): [p.stat().st_size, file_digest(p)]
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != META}


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> digest, per process


def _damage(path: Path, meta: dict[str, Any]) -> str:
    """'' when every file of the manifest is there with its size and digest, else what is wrong.
    Entries from before manifests (no 'files') are trusted."""
    for rel, (size, digest) in (meta.get("files") or {}).items():
        f = path / rel
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
