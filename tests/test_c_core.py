"""Builds and runs the C test (ggml_ext/tests/test_core.c) against the installed library."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from decoquant._lib import _find

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_c_core(tmp_path: Path) -> None:
    pkg = Path(_find()).resolve().parent  # the installed package (also under DECOQUANT_LIB)
    exe = tmp_path / "test_core"
    subprocess.run(["cc", "-std=c11", "-O1", str(ROOT / "ggml_ext/tests/test_core.c"), f"-I{pkg / 'include'}",
                    f"-L{pkg}", "-ldecoquant", f"-Wl,-rpath,{pkg}", "-lm", "-o", str(exe)], check=True)
    r = subprocess.run([str(exe)], check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: 0 failures" in r.stdout
