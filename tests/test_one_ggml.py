"""One ggml per process: decoquant and llama-cpp-python share decoquant/lib's libggml and libllama.

Each check runs in a fresh interpreter, so the import order is the one under test and not
whatever earlier tests left behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import decoquant
import pytest
from decoquant._llama import LIB_DIR as LIB

PKG = Path(decoquant.__file__).resolve().parent
PINNED_COMMIT = "0c1e570"  # llama.cpp vendored by llama-cpp-python 0.3.36
GGML_VERSION = "0.25.3"

pytestmark = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps")

# prints what this process has loaded, as JSON
REPORT = r"""
import ctypes, json, os, sys
from pathlib import Path

def native_libs():
    with open("/proc/self/maps") as f:
        paths = {l.split(None, 5)[5].strip() for l in f if len(l.split(None, 5)) == 6}
    return sorted(p for p in paths if Path(p).name.startswith(("libggml", "libllama")))

def call(dll, fn, restype):
    return ctypes.CFUNCTYPE(restype)((fn, dll))()

def report(llama_cpp=None):
    import decoquant._lib
    dq = ctypes.CDLL(decoquant._lib._find())
    r = {"maps": native_libs(), "llama_cpp_imported": "llama_cpp" in sys.modules,
         "env": os.environ.get("LLAMA_CPP_LIB_PATH"),
         "dq_commit": call(dq, "dq_ggml_commit", ctypes.c_char_p).decode(),
         "dq_version": call(dq, "dq_ggml_version", ctypes.c_char_p).decode(),
         "dq_commit_ptr": call(dq, "dq_ggml_commit", ctypes.c_void_p)}
    if llama_cpp is not None:
        lib = llama_cpp.llama_cpp._lib   # libllama as llama-cpp-python loaded it
        llama_cpp.llama_backend_init()
        r.update(llama_lib=lib._name,
                 # dlsym through libllama's handle: the ggml that libllama itself is bound to
                 llama_commit=call(lib, "ggml_commit", ctypes.c_char_p).decode(),
                 llama_version=call(lib, "ggml_version", ctypes.c_char_p).decode(),
                 llama_commit_ptr=call(lib, "ggml_commit", ctypes.c_void_p),
                 n_devices=call(lib, "ggml_backend_dev_count", ctypes.c_size_t),
                 system_info=llama_cpp.llama_print_system_info().decode())
    print("REPORT" + json.dumps(r))
"""


def run(code: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_CPP_LIB_PATH"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", REPORT + code], check=False, capture_output=True, text=True,
                          env=env, timeout=300)


def run_report(code: str, env_extra: dict[str, str] | None = None) -> dict:
    p = run(code, env_extra)
    assert p.returncode == 0, p.stdout + p.stderr
    line = next(x for x in p.stdout.splitlines() if x.startswith("REPORT"))
    return json.loads(line[len("REPORT"):])


def assert_only_decoquant_libs(maps: list[str], expected: set[str]) -> None:
    foreign = [p for p in maps if Path(p).parent != LIB]
    assert not foreign, f"libggml/libllama loaded from outside {LIB}: {foreign}"
    assert {Path(p).name for p in maps} == expected


def test_import_decoquant_alone() -> None:
    """`import decoquant` works without llama_cpp, and does not import or configure it."""
    r = run_report("import numpy as np, decoquant\n"
            "kc = decoquant.compress(np.random.default_rng(0).standard_normal((256, 2, 64)).astype(np.float32), 4)\n"
            "assert kc.nbytes > 0\n"
            "report()")
    assert not r["llama_cpp_imported"]
    assert r["env"] is None
    assert r["dq_version"] == GGML_VERSION
    # the runtime links ggml (base, CPU backend, maybe the registry); libllama is not loaded
    names = {Path(p).name for p in r["maps"]}
    assert "libggml-base.so.0" in names and not any(n.startswith("libllama") for n in names), names
    assert_only_decoquant_libs(r["maps"], names)


@pytest.mark.parametrize("order", ["decoquant_first", "llama_cpp_first"])
def test_one_ggml(order: str) -> None:
    """llama_cpp's libllama and libdecoquant are bound to one libggml-base, from decoquant/lib."""
    if order == "decoquant_first":
        code = "import decoquant\nfrom decoquant._llama import import_llama_cpp\nreport(import_llama_cpp())"
        env = None
    else:  # someone who set LLAMA_CPP_LIB_PATH and imported llama_cpp on their own
        code = ("import llama_cpp\nimport decoquant\nfrom decoquant._llama import import_llama_cpp\n"
                "assert import_llama_cpp() is llama_cpp\nreport(llama_cpp)")
        env = {"LLAMA_CPP_LIB_PATH": str(LIB)}
    r = run_report(code, env)
    assert r["llama_commit"] == r["dq_commit"]
    assert r["llama_version"] == r["dq_version"] == GGML_VERSION
    assert r["dq_commit"].split("-")[0] in (PINNED_COMMIT, "unknown"), r["dq_commit"]
    # not merely equal strings: the same string in the same loaded library
    assert r["llama_commit_ptr"] == r["dq_commit_ptr"]
    assert Path(r["llama_lib"]).resolve() == (LIB / "libllama.so").resolve()
    assert r["env"] == str(LIB)
    assert r["n_devices"] >= 1  # the CPU backend is linked in and registered
    assert "CPU" in r["system_info"]
    assert_only_decoquant_libs(r["maps"], {"libggml-base.so.0", "libggml.so.0", "libggml-cpu.so.0",
                                           "libllama.so"})


def test_llama_cpp_has_no_native_build() -> None:
    """llama-cpp-python was installed with CMAKE_ARGS=-DLLAMA_BUILD=OFF: no second ggml on disk to load."""
    spec = importlib.util.find_spec("llama_cpp")
    assert spec is not None and spec.origin, "llama-cpp-python is not installed"
    own = sorted(p.name for p in (Path(spec.origin).parent / "lib").glob("lib*.so*"))
    assert not own, (f"llama-cpp-python carries its own native libraries {own}; reinstall it with "
                     'CMAKE_ARGS="-DLLAMA_BUILD=OFF" pip install --force-reinstall --no-cache-dir '
                     "llama-cpp-python==0.3.36")


def test_foreign_lib_path_is_a_clear_error(tmp_path: Path) -> None:
    p = run("from decoquant._llama import import_llama_cpp\n"
            "try:\n    import_llama_cpp()\nexcept ImportError as e:\n    print('IMPORTERROR', e)\n",
            {"LLAMA_CPP_LIB_PATH": str(tmp_path)})
    out = p.stdout + p.stderr
    assert "IMPORTERROR" in out and "LLAMA_CPP_LIB_PATH" in out and "one ggml" in out.lower(), out
