"""Markdown tables from docs/results/*.json (pasted into docs/RESULTS.md).

    python bench/tables.py quality docs/results/quality_smollm2-135m.json
    python bench/tables.py attn docs/results/attn_cpu.json
"""

from __future__ import annotations

import json
import sys


def quality(path: str) -> str:
    d = json.load(open(path))
    out = ["| method | bits | bits/value | K rel. err | V rel. err | attn rel. err (mean / worst layer) |",
           "|---|---|---|---|---|---|"]
    for r in sorted(d["results"], key=lambda r: (r["bits"], r["method"])):
        out.append(f"| {r['method']} | {r['bits']} | {r['bits_per_value']:.3f} | {r['k_rel']:.4f} | {r['v_rel']:.4f} | "
                   f"{r['attn_rel']:.4f} / {r['attn_rel_max_layer']:.4f} |")
    return "\n".join(out)


def attn(path: str) -> str:
    d = json.load(open(path))
    out = ["| shape | context | threads | FP16 µs (min–max) | DQ µs (min–max) | DQ/FP16 speed | bytes FP16 → DQ |",
           "|---|---|---|---|---|---|---|"]
    for r in d["results"]:
        out.append(f"| {r['shape']} | {r['ctx']} | {r['threads']} | {r['f16_us']:.0f} ({r['f16_us_range'][0]:.0f}–"
                   f"{r['f16_us_range'][1]:.0f}) | {r['dq_us']:.0f} ({r['dq_us_range'][0]:.0f}–{r['dq_us_range'][1]:.0f})"
                   f" | {r['speedup']:.2f}× | {r['f16_bytes'] / 2**20:.1f} → {r['dq_bytes'] / 2**20:.2f} MiB |")
    return "\n".join(out)


if __name__ == "__main__":
    print({"quality": quality, "attn": attn}[sys.argv[1]](sys.argv[2]))
