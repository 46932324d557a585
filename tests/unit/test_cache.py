"""Content-addressed cache: stable keys, build-once semantics, clean failure, corruption
reporting, and one real multi-process race on a single key."""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medqa_core.cache import Cache, canonical_json, content_key, dir_digest, file_digest
from medqa_core.errors import CacheError, MedQAError

# ---------------------------------------------------------------- keys

LEAF = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                 st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
JSON = st.recursive(LEAF, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                  st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                    max_leaves=20)
DICTS = st.dictionaries(st.text(max_size=6), JSON, min_size=1, max_size=6)


def reorder(obj, rnd):
    """Same JSON value, dict insertion order shuffled at every level."""
    if isinstance(obj, dict):
        items = list(obj.items())
        rnd.shuffle(items)
        return {k: reorder(v, rnd) for k, v in items}
    if isinstance(obj, list):
        return [reorder(v, rnd) for v in obj]
    return obj


@given(DICTS, st.randoms(use_true_random=False))
@settings(max_examples=60, deadline=None)
def test_property_key_ignores_dict_order(payload, rnd):
    shuffled = reorder(payload, rnd)
    assert shuffled == payload
    assert content_key(shuffled) == content_key(payload)
    # canonical JSON is real JSON that round-trips to an equal value
    assert json.loads(canonical_json(payload)) == json.loads(json.dumps(payload))


@given(DICTS, st.data())
@settings(max_examples=60, deadline=None)
def test_property_key_changes_with_any_value(payload, data):
    key = data.draw(st.sampled_from(sorted(payload)))
    changed = {**payload, key: [payload[key]]}  # wrapping always changes the JSON text
    assert content_key(changed) != content_key(payload)
    other = data.draw(st.text(min_size=1, max_size=6).filter(lambda k: k not in payload))
    assert content_key({**payload, other: None}) != content_key(payload)


def test_key_examples():
    k = content_key({"lr": 0.001, "steps": 10})
    assert len(k) == 64 and all(c in "0123456789abcdef" for c in k)
    assert k == content_key({"steps": 10, "lr": 0.001})
    assert k != content_key({"lr": 0.002, "steps": 10})
    assert content_key({"x": 1}) != content_key({"x": "1"})
    assert content_key({"x": 1}) != content_key({"x": True})
    assert content_key({"a": {"b": 1, "c": 2}}) == content_key({"a": {"c": 2, "b": 1}})
    assert content_key([1, 2]) != content_key([2, 1])  # list order matters


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_key_rejects_non_finite(bad):
    with pytest.raises((ValueError, MedQAError)):
        content_key({"lr": bad})


def test_file_and_dir_digest(tmp_path):
    import hashlib

    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_bytes(b"alpha")
    (tmp_path / "d" / "sub" / "b.bin").write_bytes(b"\x00" * 3_000_000)
    assert file_digest(tmp_path / "d" / "a.txt") == hashlib.sha256(b"alpha").hexdigest()
    assert file_digest(tmp_path / "d" / "sub" / "b.bin", chunk=4096) == hashlib.sha256(b"\x00" * 3_000_000).hexdigest()
    d1 = dir_digest(tmp_path / "d")
    (tmp_path / "d" / "a.txt").write_bytes(b"alphA")
    assert dir_digest(tmp_path / "d") != d1
    (tmp_path / "d" / "a.txt").write_bytes(b"alpha")
    assert dir_digest(tmp_path / "d") == d1
    (tmp_path / "d" / "a.txt").rename(tmp_path / "d" / "c.txt")
    assert dir_digest(tmp_path / "d") != d1  # names count, not just contents


# ---------------------------------------------------------------- get_or_build


class Builder:
    def __init__(self, content: str = "artefact", meta=None, fail: BaseException | None = None):
        self.calls = 0
        self.content = content
        self.meta = meta
        self.fail = fail
        self.tmp_dirs: list[Path] = []

    def __call__(self, tmp: Path):
        self.calls += 1
        self.tmp_dirs.append(tmp)
        assert tmp.is_dir() and not any(tmp.iterdir())
        (tmp / "out.txt").write_text(self.content)
        (tmp / "nested").mkdir()
        (tmp / "nested" / "x.bin").write_bytes(b"\x01\x02")
        if self.fail is not None:
            raise self.fail
        return self.meta


def leftovers(cache: Cache, kind: str, key: str) -> list[Path]:
    parent = cache.root / kind / key[:2]
    return sorted(parent.iterdir()) if parent.is_dir() else []


def test_builds_once_then_hits(tmp_path):
    cache = Cache(tmp_path / "c")
    payload = {"what": "adapter", "steps": 3, "nested": {"b": 1, "a": [1, 2]}}
    assert cache.entry("adapter", content_key(payload)) is None
    b = Builder(meta={"seconds": 1.5, "n": 3})
    e1 = cache.get_or_build("adapter", payload, b)
    assert b.calls == 1 and e1.built
    assert e1.key == content_key(payload)
    assert e1.path == cache.root / "adapter" / e1.key[:2] / e1.key
    assert (e1.path / "out.txt").read_text() == "artefact"
    assert (e1.path / "nested" / "x.bin").read_bytes() == b"\x01\x02"
    assert e1.meta["seconds"] == 1.5 and e1.meta["n"] == 3
    assert e1.meta["kind"] == "adapter" and e1.meta["key"] == e1.key and e1.meta["inputs"] == payload
    on_disk = json.loads((e1.path / "meta.json").read_text())
    assert on_disk.pop("meta_sha256") == content_key(e1.meta)  # meta.json is sealed with its own digest
    assert on_disk == e1.meta
    assert not b.tmp_dirs[0].exists()  # renamed into place

    e2 = cache.get_or_build("adapter", {"nested": {"a": [1, 2], "b": 1}, "steps": 3, "what": "adapter"}, b)
    assert b.calls == 1 and not e2.built
    assert e2.path == e1.path and e2.meta == e1.meta and e2.key == e1.key
    hit = cache.entry("adapter", content_key(payload))
    assert hit is not None and hit.path == e1.path and not hit.built
    assert leftovers(cache, "adapter", e1.key) == [e1.path]

    # a second Cache object on the same root sees the entry (state lives on disk)
    assert Cache(tmp_path / "c").get_or_build("adapter", payload, b).built is False
    assert b.calls == 1


def test_distinct_payloads_and_kinds_are_distinct_entries(tmp_path):
    cache = Cache(tmp_path)
    b = Builder()
    e1 = cache.get_or_build("answers", {"x": 1}, b)
    e2 = cache.get_or_build("answers", {"x": 2}, b)
    e3 = cache.get_or_build("scores", {"x": 1}, b)
    assert b.calls == 3 and len({e1.path, e2.path, e3.path}) == 3
    assert e1.key == e3.key and e1.path != e3.path


def test_builder_returning_none_gives_base_meta(tmp_path):
    e = Cache(tmp_path).get_or_build("k", [1, "two"], lambda tmp: None)
    assert e.built and set(e.meta) == {"kind", "key", "inputs", "files"} and e.meta["files"] == {}


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failing_builder_leaves_nothing_and_rebuilds(tmp_path, exc):
    cache = Cache(tmp_path)
    payload = {"p": 1}
    key = content_key(payload)
    failing = Builder(fail=exc)
    with pytest.raises(type(exc)):
        cache.get_or_build("adapter", payload, failing)
    assert failing.calls == 1
    assert not failing.tmp_dirs[0].exists()
    assert leftovers(cache, "adapter", key) == []
    assert cache.entry("adapter", content_key(payload)) is None
    good = Builder(content="second")
    e = cache.get_or_build("adapter", payload, good)
    assert good.calls == 1 and e.built and (e.path / "out.txt").read_text() == "second"
    assert leftovers(cache, "adapter", key) == [e.path]


@pytest.mark.parametrize("meta", [{"loss": math.nan}, {"hist": [1.0, math.inf]}, {"a": {"b": -math.inf}}])
def test_non_finite_meta_raises_and_leaves_nothing(tmp_path, meta):
    cache = Cache(tmp_path)
    b = Builder(meta=meta)
    with pytest.raises(MedQAError) as info:
        cache.get_or_build("adapter", {"p": 2}, b)
    assert isinstance(info.value, CacheError)
    key = content_key({"p": 2})
    assert "adapter" in str(info.value) and key in str(info.value) and "non-finite" in str(info.value)
    assert leftovers(cache, "adapter", key) == []
    assert cache.entry("adapter", content_key({"p": 2})) is None
    assert cache.get_or_build("adapter", {"p": 2}, Builder(meta={"loss": 0.5})).built


@pytest.mark.parametrize("garbage", ["{not json", "", '{"kind": "adapter", "key": ', "[1]", "flip"])
def test_corrupt_meta_is_rebuilt_with_a_warning_naming_it(tmp_path, garbage, caplog):
    """An unreadable or altered meta.json (sealed with its own sha256) makes the entry damaged:
    never served, rebuilt with one warning naming the entry."""
    cache = Cache(tmp_path)
    e = cache.get_or_build("adapter", {"p": 3}, Builder(meta={"n": 12}))
    meta = e.path / "meta.json"
    if garbage == "flip":  # still valid JSON, one value changed
        garbage = meta.read_text().replace('"n": 12', '"n": 13')
        assert garbage != meta.read_text()
    meta.write_text(garbage)
    assert cache.entry("adapter", content_key({"p": 3})) is None
    b = Builder(meta={"n": 12})
    with caplog.at_level("WARNING", logger="medqa_core.cache"):
        e2 = cache.get_or_build("adapter", {"p": 3}, b)
    assert b.calls == 1 and e2.built and e2.meta["n"] == 12
    assert any("damaged" in r.message and e.key[:12] in r.message and "meta.json" in r.message for r in caplog.records)
    assert cache.entry("adapter", content_key({"p": 3})) is not None


def test_leftover_entry_without_meta_is_rebuilt(tmp_path):
    cache = Cache(tmp_path)
    payload = {"p": 4}
    stale = cache.path_for("adapter", content_key(payload))
    stale.mkdir(parents=True)
    (stale / "half-written.bin").write_bytes(b"junk")
    b = Builder()
    e = cache.get_or_build("adapter", payload, b)
    assert b.calls == 1 and e.built and e.path == stale
    assert sorted(p.name for p in e.path.iterdir()) == ["meta.json", "nested", "out.txt"]


def test_unusable_root_is_a_cache_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(MedQAError) as info:
        Cache(blocker / "cache")
    assert isinstance(info.value, CacheError)
    assert str(blocker / "cache") in str(info.value) and "--cache-dir" in str(info.value)


# ---------------------------------------------------------------- concurrency


def _race_worker(root: str, counter: str, barrier, queue) -> None:  # runs in a spawned process
    from medqa_core.cache import Cache

    def build(tmp: Path) -> dict:
        with open(counter, "a") as fh:
            fh.write("built\n")
        time.sleep(0.3)
        (tmp / "data.txt").write_text("content-from-the-single-build")
        return {"builder_pid": __import__("os").getpid()}

    cache = Cache(root)
    barrier.wait(timeout=30)
    try:
        e = cache.get_or_build("race", {"case": "mistral-wikidoc"}, build)
        queue.put((e.key, str(e.path), (e.path / "data.txt").read_text(), e.built, e.meta["builder_pid"]))
    except BaseException as exc:  # report instead of hanging the parent
        queue.put(("error", repr(exc), "", False, 0))


def test_concurrent_processes_build_once(tmp_path):
    ctx = mp.get_context("spawn")
    n = 4
    counter = tmp_path / "counter.txt"
    barrier = ctx.Barrier(n)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_race_worker, args=(str(tmp_path / "cache"), str(counter), barrier, queue))
             for _ in range(n)]
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=60) for _ in range(n)]
    finally:
        for p in procs:
            p.join(timeout=30)
    assert all(r[0] != "error" for r in results), results
    assert all(p.exitcode == 0 for p in procs)
    assert counter.read_text().splitlines() == ["built"]
    assert len({(r[0], r[1], r[2], r[4]) for r in results}) == 1
    assert results[0][2] == "content-from-the-single-build"
    assert sum(r[3] for r in results) == 1  # exactly one process reports built=True
    key = results[0][0]
    assert leftovers(Cache(tmp_path / "cache"), "race", key) == [Path(results[0][1])]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_entry_is_rebuilt_with_a_warning_naming_it(tmp_path, damage, caplog):
    """A same-size corruption, a truncation or a deleted file of a cached entry is found by the
    checksum manifest recorded at build time; the entry is rebuilt, never served."""
    cache = Cache(tmp_path)
    b = Builder()
    e = cache.get_or_build("adapter", {"p": 9}, b)
    f = e.path / "out.txt"
    data = f.read_bytes()
    if damage == "flip":
        f.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    elif damage == "truncate":
        f.write_bytes(data[:-1])
    else:
        f.unlink()
    with caplog.at_level("WARNING", logger="medqa_core.cache"):
        e2 = cache.get_or_build("adapter", {"p": 9}, b)
    assert b.calls == 2 and e2.built and f.read_bytes() == data
    assert any("damaged" in r.message and e.key[:12] in r.message for r in caplog.records)
    assert cache.get_or_build("adapter", {"p": 9}, b).built is False and b.calls == 2


def test_orphaned_temp_dirs_of_a_killed_build_are_removed(tmp_path):
    cache = Cache(tmp_path)
    payload = {"p": 10}
    key = content_key(payload)
    parent = cache.path_for("adapter", key).parent
    parent.mkdir(parents=True)
    orphan = parent / f".{key[:12]}-killed"
    orphan.mkdir()
    (orphan / "partial.bin").write_bytes(b"x")
    cache.get_or_build("adapter", payload, Builder())
    assert not orphan.exists()


# ---------------------------------------------------------------- robustness (issue 24)


def _reseal(meta_path: Path, change) -> None:
    """Rewrite meta.json with ``change(meta)`` applied and a seal that matches the new content
    (what a tool that edits the cache by hand would write)."""
    meta = json.loads(meta_path.read_text())
    meta.pop("meta_sha256", None)
    change(meta)
    meta["meta_sha256"] = content_key(meta)
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize("what", ["empty", "empty-sealed", "no-stats", "no-key", "no-inputs", "other-key"])
def test_meta_without_its_required_fields_is_rebuilt_never_raised(tmp_path, what, caplog):
    """A meta.json of ``{}`` (or one lacking a field the entry's reader needs) used to be served,
    and the adapter stage then died with KeyError 'stats'. It is a damaged entry: rebuilt, with
    one warning line."""
    cache = Cache(tmp_path)
    payload = {"p": 20}
    e = cache.get_or_build("adapter", payload, Builder(meta={"stats": {"steps": 3}}), required=("stats",))
    meta_path = e.path / "meta.json"
    if what == "empty":
        meta_path.write_text("{}")
    else:
        drop = {"empty-sealed": list(e.meta), "no-stats": ["stats"], "no-key": ["key"], "no-inputs": ["inputs"]}
        _reseal(meta_path, lambda m: [m.pop(k) for k in drop[what]] if what in drop else m.update(key="f" * 64))
    assert cache.entry("adapter", e.key, required=("stats",)) is None
    b = Builder(meta={"stats": {"steps": 3}})
    with caplog.at_level("WARNING", logger="medqa_core.cache"):
        again = cache.get_or_build("adapter", payload, b, required=("stats",))
    assert b.calls == 1 and again.built and again.meta["stats"] == {"steps": 3}
    warned = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(warned) == 1 and e.key[:12] in warned[0] and "meta.json" in warned[0] and "\n" not in warned[0]
    assert cache.entry("adapter", e.key, required=("stats",)) is not None


@pytest.mark.parametrize("strip", ["files-and-seal", "files-resealed", "emptied-manifest", "malformed-manifest"])
def test_entry_stripped_of_its_checksums_is_rebuilt_not_served(tmp_path, strip, caplog):
    """An entry whose meta.json lost its checksums used to be served as it read, so a corrupt
    weight file loaded. Without a manifest covering every file it is damaged and rebuilt."""
    cache = Cache(tmp_path)
    payload = {"p": 21}
    e = cache.get_or_build("adapter", payload, Builder())
    (e.path / "out.txt").write_text("corrupt weights")  # and its checksum is gone with the manifest
    meta_path = e.path / "meta.json"
    if strip == "files-and-seal":
        meta = json.loads(meta_path.read_text())
        del meta["files"], meta["meta_sha256"]
        meta_path.write_text(json.dumps(meta))
    else:
        change = {"files-resealed": lambda m: m.pop("files"),
                  "emptied-manifest": lambda m: m.update(files={}),
                  "malformed-manifest": lambda m: m.update(files={"out.txt": 5, "nested/x.bin": "?"})}[strip]
        _reseal(meta_path, change)
    assert cache.entry("adapter", e.key) is None
    b = Builder()
    with caplog.at_level("WARNING", logger="medqa_core.cache"):
        again = cache.get_or_build("adapter", payload, b)
    assert b.calls == 1 and again.built and (again.path / "out.txt").read_text() == "artefact"
    assert any("damaged" in r.getMessage() and e.key[:12] in r.getMessage() for r in caplog.records)


def test_a_file_added_to_an_entry_after_it_was_built_makes_it_damaged(tmp_path):
    cache = Cache(tmp_path)
    e = cache.get_or_build("adapter", {"p": 22}, Builder())
    (e.path / "nested" / "planted.bin").write_bytes(b"not built here")
    assert cache.entry("adapter", e.key) is None
    assert cache.get_or_build("adapter", {"p": 22}, Builder()).built


def _first_builder(root: str, started: str, go: str, queue) -> None:  # runs in a spawned process
    from medqa_core.cache import Cache

    def build(tmp: Path) -> dict:
        Path(started).write_text(str(tmp))
        deadline = time.monotonic() + 60
        while not Path(go).exists():
            if time.monotonic() > deadline:
                raise TimeoutError("never told to go on")
            time.sleep(0.02)
        (tmp / "data.txt").write_text("from-the-first-builder")  # fails if another process deleted tmp
        return {"builder": "first"}

    try:
        e = Cache(root).get_or_build("race", {"case": "lock-deleted"}, build)
        queue.put(("ok", str(e.path), (e.path / "data.txt").read_text(), e.built))
    except BaseException as exc:  # report instead of hanging the parent
        queue.put(("error", repr(exc), "", False))


def test_a_lock_file_deleted_while_held_lets_no_one_delete_the_live_build(tmp_path, caplog):
    """Process A holds the key's lock and builds; the lock file is deleted (someone cleaning the
    cache's locks/); process B then gets a lock of its own. B must neither delete A's in-progress
    directory nor replace its entry: it waits for A's live build and serves A's entry."""
    import threading

    ctx = mp.get_context("spawn")
    root, started, go = tmp_path / "cache", tmp_path / "started", tmp_path / "go"
    queue = ctx.Queue()
    first = ctx.Process(target=_first_builder, args=(str(root), str(started), str(go), queue))
    first.start()
    out: dict = {}
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        first_tmp = Path(started.read_text())
        [lock] = (root / "locks").glob("race-*.lock")
        lock.unlink()
        second = Builder(content="from-the-second-builder")

        def run_second():
            out["entry"] = Cache(root).get_or_build("race", {"case": "lock-deleted"}, second)

        with caplog.at_level("WARNING", logger="medqa_core.cache"):
            t = threading.Thread(target=run_second)
            t.start()
            time.sleep(1.0)
            assert first_tmp.is_dir(), "the second process deleted the first one's build in progress"
            assert second.calls == 0
            go.write_text("go")
            t.join(timeout=60)
        result = queue.get(timeout=60)
    finally:
        go.touch()
        first.join(timeout=30)
    assert result[0] == "ok", result
    assert result[3] is True and result[2] == "from-the-first-builder"
    entry = out["entry"]
    assert not entry.built and second.calls == 0
    assert entry.path == Path(result[1]) and (entry.path / "data.txt").read_text() == "from-the-first-builder"
    assert any("being built by another process" in r.getMessage() for r in caplog.records)
    assert leftovers(Cache(root), "race", entry.key) == [entry.path]


def test_a_sound_entry_that_appears_during_a_build_wins_and_the_late_build_is_discarded(tmp_path):
    """Two builders of one key that both got past the lock: the finished directory is renamed into
    place atomically; the one that finds a sound entry there discards its own and serves it
    (it never deletes the other's)."""
    cache = Cache(tmp_path / "cache")
    payload = {"p": 23}
    winner = Cache(tmp_path / "elsewhere").get_or_build("adapter", payload, Builder(content="winner"))
    path = cache.path_for("adapter", winner.key)

    def late_build(tmp: Path) -> dict:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(winner.path, path)  # the other builder finished first
        (tmp / "out.txt").write_text("loser")
        return {"who": "late"}

    e = cache.get_or_build("adapter", payload, late_build)
    assert not e.built and e.path == path and "who" not in e.meta
    assert (path / "out.txt").read_text() == "winner"
    assert leftovers(cache, "adapter", winner.key) == [path]


def test_temp_dirs_are_removed_only_when_their_builder_is_provably_gone(tmp_path):
    """A build killed earlier on this host (its process no longer runs) leaves a directory that
    the next build of the key removes; another host's build directory cannot be checked and is
    left alone; a live builder's is waited for, and removed once that builder dies."""
    import subprocess
    import sys

    from medqa_core import cache as cache_mod

    cache = Cache(tmp_path)
    payload = {"p": 24}
    key = content_key(payload)
    parent = cache.path_for("adapter", key).parent
    parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    tag = cache_mod._host_tag()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    try:
        start = cache_mod._started(sleeper.pid)
        dirs = {
            "gone": parent / f".{key[:12]}-{tag}-{dead_pid}-12345-abcd1234",
            "remote": parent / f".{key[:12]}-{'0' * 12}-{os.getpid()}-1-abcd1234",
            "live-then-gone": parent / f".{key[:12]}-{tag}-{sleeper.pid}-{start}-abcd1234",
        }
        for d in dirs.values():
            d.mkdir()
            (d / "partial.bin").write_bytes(b"x")
        t0 = time.monotonic()
        e = cache.get_or_build("adapter", payload, Builder())
        waited = time.monotonic() - t0
    finally:
        sleeper.kill()
        sleeper.wait()
    assert e.built
    assert waited > 0.5  # it waited for the live builder rather than building beside it
    assert not dirs["gone"].exists() and not dirs["live-then-gone"].exists()
    assert dirs["remote"].exists()
