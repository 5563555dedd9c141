"""llama-cpp-python on DecoQuant's ggml: one ggml per process.

The build installs ggml and libllama (llama.cpp as vendored by llama-cpp-python 0.3.36) into
``decoquant/lib/``; libdecoquant links that ggml. llama-cpp-python is installed without a native
build of its own (``CMAKE_ARGS=-DLLAMA_BUILD=OFF``) and is pointed at the same directory through
``LLAMA_CPP_LIB_PATH``. Import it with :func:`import_llama_cpp`, never with a bare
``import llama_cpp``: that one finds no libllama unless LLAMA_CPP_LIB_PATH is already set.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path
from types import ModuleType

LLAMA_CPP_PYTHON_VERSION = "0.3.36"

_REINSTALL = (f'CMAKE_ARGS="-DLLAMA_BUILD=OFF" pip install --force-reinstall --no-cache-dir '
              f'llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}')


def _lib_dir() -> Path:
    from . import _lib

    # the installed layout: decoquant/libdecoquant.so next to decoquant/lib/ (also when
    # DECOQUANT_LIB points a source checkout at an installed package's library)
    return Path(_lib._find()).resolve().parent / "lib"


LIB_DIR = _lib_dir()


@functools.cache
def _dq() -> ctypes.CDLL:
    from . import _lib  # loads libdecoquant, and with it decoquant/lib/libggml-base.so.0

    dll = ctypes.CDLL(_lib._find())  # the same handle: the library is already loaded
    for name in ("dq_ggml_commit", "dq_ggml_version"):
        getattr(dll, name).restype = ctypes.c_char_p
    return dll


def dq_ggml_commit() -> str:
    """ggml_commit() of the libggml that libdecoquant is linked to (e.g. "0c1e570-dirty")."""
    return _dq().dq_ggml_commit().decode()


def dq_ggml_version() -> str:
    """ggml_version() of the libggml that libdecoquant is linked to (e.g. "0.25.3")."""
    return _dq().dq_ggml_version().decode()


def loaded_native_libs() -> list[str]:
    """Paths of the libggml*/libllama* files mapped into this process (Linux; [] elsewhere)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}
    except OSError:
        return []
    return sorted(p for p in paths if Path(p).name.startswith(("libggml", "libllama")))


def _mismatch(msg: str) -> ImportError:
    return ImportError(f"llama-cpp-python does not use DecoQuant's ggml: {msg}. One ggml per process: "
                       f"llama_cpp must load libllama from {LIB_DIR} (LLAMA_CPP_LIB_PATH), so import it "
                       "through decoquant._llama.import_llama_cpp() and leave LLAMA_CPP_LIB_PATH unset "
                       "or pointing there")


def import_llama_cpp() -> ModuleType:
    """Import llama_cpp so that it uses decoquant's libllama and libggml, and check that it does.

    Sets LLAMA_CPP_LIB_PATH (os.environ.setdefault) before the import. Raises ImportError if
    llama-cpp-python is missing, is not version 0.3.36, or loads a different libllama/libggml.
    """
    dq = _dq()
    if not (LIB_DIR / "libllama.so").exists():
        raise ImportError(f"{LIB_DIR / 'libllama.so'} is missing: decoquant was not built with its llama.cpp "
                          "libraries; reinstall it (see README)")
    os.environ.setdefault("LLAMA_CPP_LIB_PATH", str(LIB_DIR))
    preloaded = "llama_cpp" in sys.modules
    try:
        import llama_cpp
    except ModuleNotFoundError as e:
        if e.name != "llama_cpp":
            raise
        raise ImportError(f"llama-cpp-python is not installed; install it without its native build: "
                          f"{_REINSTALL}") from e
    except (OSError, RuntimeError) as e:  # FileNotFoundError: no libllama.so in LLAMA_CPP_LIB_PATH
        sys.modules.pop("llama_cpp", None)
        raise _mismatch(f"loading libllama from LLAMA_CPP_LIB_PATH={os.environ['LLAMA_CPP_LIB_PATH']!r} "
                        f"failed ({e})") from e

    version = getattr(llama_cpp, "__version__", "?")
    if version != LLAMA_CPP_PYTHON_VERSION:
        raise ImportError(f"llama-cpp-python {version} is installed; decoquant is built for "
                          f"{LLAMA_CPP_PYTHON_VERSION} (its llama.cpp commit): {_REINSTALL}")
    lib = llama_cpp.llama_cpp._lib
    loaded = Path(lib._name).resolve()
    if loaded != (LIB_DIR / "libllama.so").resolve():
        how = "imported before decoquant set LLAMA_CPP_LIB_PATH" if preloaded else "LLAMA_CPP_LIB_PATH"
        raise _mismatch(f"it loaded {loaded} ({how})")
    # ggml_commit as seen from libllama (dlsym searches libllama's dependencies) must be the very
    # same string in the very same libggml-base as the one libdecoquant calls
    if _address("ggml_commit", lib) != _address("dq_ggml_commit", dq):
        raise _mismatch("libllama and libdecoquant see different libggml-base instances")
    return llama_cpp


def _address(fn: str, dll: ctypes.CDLL) -> int | None:
    """The pointer that dll's fn() returns (a string in libggml-base's read-only data)."""
    return ctypes.CFUNCTYPE(ctypes.c_void_p)((fn, dll))()
