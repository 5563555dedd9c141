"""The measured tables in the docs are what bench/tables.py renders from the committed JSON."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("tables", ROOT / "bench/tables.py")
tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tables)


def test_cuda_table_matches_json() -> None:
    table = tables.attn_cuda(str(ROOT / "docs/results/attn_cuda.json"))
    assert table.count("\n") == len(tables.CUDA_CASES) + 1  # every case measured, plus the header rows
    assert table in (ROOT / "docs/RESULTS_CUDA.md").read_text()


def test_cuda_summary_matches_json() -> None:
    table = tables.attn_cuda_summary(str(ROOT / "docs/results/attn_cuda.json"))
    assert table.count("\n") >= 6  # the goal cases of both presets are measured
    assert table in (ROOT / "docs/RESULTS.md").read_text()
