"""Content-addressed cache: stable keys, build-once semantics, clean failure, corruption
reporting, and one real multi-process race on a single key."""
from __future__ import annotations

import json
import math
import multiprocessing as mp
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
