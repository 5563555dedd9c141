"""What eval and bench record next to their numbers (hashes, versions, machine) and their progress bar."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, TextIO

_SHA: dict[tuple[str, int, float], str] = {}


def sha256(path: str | os.PathLike) -> str:
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime)
    if key not in _SHA:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _SHA[key] = h.hexdigest()
    return _SHA[key]


def print_and_save(rep: dict[str, Any], table: str, json_path: str | os.PathLike | None) -> None:
    """The Markdown table to stdout; every number as JSON to json_path (if given)."""
    print(table)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(rep, indent=1) + "\n")


def versions() -> dict[str, str]:
    import numpy as np

    from . import __version__
    from ._llama import dq_ggml_commit, dq_ggml_version

    v = {"decoquant": __version__, "ggml": dq_ggml_version(), "ggml_commit": dq_ggml_commit(),
         "numpy": np.__version__, "python": platform.python_version()}
    try:
        import llama_cpp

        v["llama_cpp_python"] = llama_cpp.__version__
    except ImportError:
        pass
    from ._lib import ffi, lib

    v["kernels"] = ffi.string(lib.dq_cpu_kernels()).decode()
    return v


def _proc_field(path: str, key: str) -> str | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    cpu = _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "?"
    mem_kb = _proc_field("/proc/meminfo", "MemTotal")
    mem = int(mem_kb.split()[0]) * 1024 if mem_kb else None
    return {"cpu": cpu, "cpus": os.cpu_count(), "mem_bytes": mem, "platform": platform.platform(),
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def peak_rss() -> int:
    """Peak resident set size of this process, bytes (VmHWM: unlike ru_maxrss, not inherited through fork)."""
    hwm = _proc_field("/proc/self/status", "VmHWM")
    if hwm:
        return int(hwm.split()[0]) * 1024
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def fmt_s(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """A progress bar on stderr (a line per step when stderr is not a terminal)."""

    def __init__(self, total: int, unit: str = "tok", enabled: bool = True, stream: TextIO | None = None) -> None:
        self.total, self.unit, self.enabled = max(1, total), unit, enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.done, self.t0, self.desc, self._last = 0, time.perf_counter(), "", 0.0

    def step(self, desc: str) -> None:
        if self.enabled and not self.tty and self.desc:
            self._line("\n")
        self.desc = desc

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and self.tty and now - self._last > 0.2:
            self._last = now
            self._line("\r")

    def _line(self, end: str) -> None:
        el = time.perf_counter() - self.t0
        f = min(1.0, self.done / self.total)
        eta = el / f * (1 - f) if f > 0 else 0.0
        bar = "#" * int(24 * f) + "." * (24 - int(24 * f))
        msg = f"[{bar}] {100 * f:3.0f}% {self.done}/{self.total} {self.unit} {fmt_s(el)} ETA {fmt_s(eta)}  {self.desc}"
        if end == "\r":
            self.stream.write("\r" + msg[:150].ljust(150))
        else:
            self.stream.write(msg + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._line("\r" if self.tty else "\n")
            if self.tty:
                self.stream.write("\n")
            self.stream.flush()
