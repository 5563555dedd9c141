"""Markdown tables from docs/results/*.json (pasted into docs/RESULTS.md).

    python bench/tables.py quality docs/results/quality_smollm2-135m.json
    python bench/tables.py quality-main docs/results/quality_smollm2-135m.json
    python bench/tables.py attn docs/results/attn_cpu.json
    python bench/tables.py attn-cuda docs/results/attn_cuda.json      (docs/RESULTS_CUDA.md)
    python bench/tables.py attn-cuda-summary docs/results/attn_cuda.json   (docs/RESULTS.md, section 5)
"""

from __future__ import annotations

import json
import sys


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def quality(path: str) -> str:
    d = _load(path)
    out = ["| method | bits | bits/value | K rel. err | V rel. err | attn rel. err (mean / worst layer) |",
           "|---|---|---|---|---|---|"]
    for r in sorted(d["results"], key=lambda r: (r["bits"], r["method"])):
        out.append(f"| {r['method']} | {r['bits']} | {r['bits_per_value']:.3f} | {r['k_rel']:.4f} | {r['v_rel']:.4f} | "
                   f"{r['attn_rel']:.4f} / {r['attn_rel_max_layer']:.4f} |")
    return "\n".join(out)


MAIN = {  # the compact table: name in the JSON -> label
    "dq paper (token, sym, layer, g=.5)": "DecoQuant, paper preset (per-token sym)",
    "dq token asym": "DecoQuant, per-token asym",
    "dq channel asym chunk=256": "**DecoQuant, default** (per-channel asym, chunk 256)",
    "dq channel asym": "DecoQuant, per-channel asym, chunk 128",
    "rtn token sym": "RTN per-token sym (no decomposition)",
    "rtn channel asym (per 128 tokens)": "RTN per-channel asym, 128 tokens (no decomposition)",
    "rtn group32 (llama q4_0/q8_0)": "llama.cpp q4_0 / q8_0 layout, no rotation",
    "rtn group32 + hadamard (llama as shipped)": "llama.cpp q4_0 / q8_0 + Hadamard (as shipped)",
    "kivi (K channel/32 tok, V token/32 ch, asym)": "KIVI-style (K per-channel/32 tok, V per-token/32 ch)",
}


def quality_main(path: str) -> str:
    d = _load(path)
    out = ["| method | bits | bits/value | K rel. err | V rel. err | attn rel. err | worst layer |",
           "|---|---|---|---|---|---|---|"]
    rows = [r for r in d["results"] if r["method"] in MAIN]
    for r in sorted(rows, key=lambda r: (r["bits"], list(MAIN).index(r["method"]))):
        out.append(f"| {MAIN[r['method']]} | {r['bits']} | {r['bits_per_value']:.3f} | {r['k_rel']:.4f} | "
                   f"{r['v_rel']:.4f} | {r['attn_rel']:.4f} | {r['attn_rel_max_layer']:.4f} |")
    return "\n".join(out)


def attn(path: str) -> str:
    d = _load(path)
    out = ["| shape | context | threads | FP16 µs (min–max) | DQ µs (min–max) | DQ/FP16 speed | bytes FP16 → DQ |",
           "|---|---|---|---|---|---|---|"]
    for r in d["results"]:
        out.append(f"| {r['shape']} | {r['ctx']} | {r['threads']} | {r['f16_us']:.0f} ({r['f16_us_range'][0]:.0f}–"
                   f"{r['f16_us_range'][1]:.0f}) | {r['dq_us']:.0f} ({r['dq_us_range'][0]:.0f}–"
                   f"{r['dq_us_range'][1]:.0f})"
                   f" | {r['speedup']:.2f}× | {r['f16_bytes'] / 2**20:.1f} → {r['dq_bytes'] / 2**20:.2f} MiB |")
    return "\n".join(out)


# the cases of docs/RESULTS_CUDA.md's main table; the goal cases in bold
CUDA_CASES = [("llama2-7b", c, b) for c, b in ((4096, 1), (4096, 8), (4096, 32), (32768, 1), (32768, 8), (32768, 32),
                                             (131072, 1), (131072, 8))]
CUDA_CASES += [("llama3-8b", c, b) for c in (4096, 32768, 131072) for b in (1, 8, 32)]
CUDA_CASES += [("qwen2.5-1.5b", 4096, 1), ("qwen2.5-1.5b", 32768, 1), ("qwen2.5-1.5b", 32768, 8),
               ("qwen2.5-1.5b", 131072, 8), ("qwen2.5-1.5b", 131072, 32)]
CUDA_GOAL = {("llama3-8b", 32768, 1), ("llama3-8b", 32768, 8)}


def _us(*ms: float | None) -> str:
    return " / ".join("–" if m is None else f"{m * 1e3:.1f}" for m in ms)


def _x(*v: float | None, fmt: str = "{:.2f}") -> str:
    return " / ".join("–" if x is None else fmt.format(x) for x in v)


def _ceiling(r: dict) -> str:
    """The read probe's graph time on the case's bytes, and DQ's graph time as a share of it."""
    if not r.get("ceiling_ms_graph") or not r.get("pct_ceiling_graph"):
        return "–"
    return f"{r['ceiling_ms_graph'] * 1e3:.1f} ({r['pct_ceiling_graph']:.0f} %)"


def attn_cuda(path: str) -> str:
    """Times: single launch / back-to-back / back-to-back replayed from a CUDA graph."""
    d = _load(path)
    rows = {(r["shape"], r["ctx"], r["batch"]): r for r in d["rows"]}
    out = [("| shape | ctx | batch | DQ4 µs (single / b2b / graph) | MB read | % of 4.8 TB/s (single / b2b / graph) "
            "| SDPA FP16 µs (single / b2b / graph) | speedup (single / b2b / graph) "
            "| read ceiling µs, graph (DQ4 reaches) | kernel |"),
           "|---|---|---|---|---|---|---|---|---|---|"]
    for key in CUDA_CASES:
        if key not in rows:
            continue
        r, b = rows[key], "**" if key in CUDA_GOAL else ""
        cells = [f"{b}{key[0]}{b}", f"{b}{key[1] // 1024}K{b}", f"{b}{key[2]}{b}",
                 f"{b}{_us(r['ms'], r['ms_b2b'], r.get('ms_graph'))}{b}", f"{r['bytes'] / 1e6:.0f}",
                 f"{b}{_x(r['pct_peak'], r['pct_peak_b2b'], r.get('pct_peak_graph'), fmt='{:.0f}')}{b}",
                 _us(r["sdpa_ms"], r["sdpa_ms_b2b"], r.get("sdpa_ms_graph")),
                 f"{b}{_x(r['speedup'], r['speedup_b2b'], r.get('speedup_graph'))}{b}", _ceiling(r), r["kernel"]]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def attn_cuda_summary(path: str) -> str:
    """The goal cases of both presets and a few neighbours (docs/RESULTS.md, section 5)."""
    d = _load(path)
    presets = [("paper", d["rows"]), ("default", d.get("default_preset", {}).get("rows", []))]
    out = [("| shape | ctx | batch | preset | DQ4 µs (single / b2b / graph) | % of 4.8 TB/s (b2b / graph) "
           "| speedup vs SDPA (single / b2b / graph) | read ceiling µs, graph (DQ4 reaches) |"),
           "|---|---|---|---|---|---|---|---|"]
    for key in [("llama3-8b", 32768, 1), ("llama3-8b", 32768, 8), ("llama3-8b", 131072, 8), ("llama2-7b", 32768, 8),
                ("qwen2.5-1.5b", 32768, 8)]:
        for name, rows in presets:
            r = next((r for r in rows if (r["shape"], r["ctx"], r["batch"]) == key), None)
            if r is None:
                continue
            pct = _x(r["pct_peak_b2b"], r.get("pct_peak_graph"), fmt="{:.0f} %")
            sp = _x(r["speedup"], r["speedup_b2b"], r.get("speedup_graph"), fmt="{:.2f}x")
            out.append(f"| {key[0]} | {key[1] // 1024}K | {key[2]} | {name} | "
                       f"{_us(r['ms'], r['ms_b2b'], r.get('ms_graph'))} | {pct} | {sp} | {_ceiling(r)} |")
    return "\n".join(out)


if __name__ == "__main__":
    print({"quality": quality, "quality-main": quality_main, "attn": attn, "attn-cuda": attn_cuda,
           "attn-cuda-summary": attn_cuda_summary}[sys.argv[1]](sys.argv[2]))
