"""Timeline of one fused-attention launch: when each CTA starts and ends, when each warp's first
K unit lands and when its last unit is done (globaltimer, ns). Shows where a launch loses time:
the start-up chain, warps of one CTA finishing apart, CTAs finishing apart (and on which SMs),
the split merge.

Needs a diagnostics build of the CUDA library (the kernel records the times into a device array):

    cmake -S . -B build/cuda-timeline -DDQ_CUDA=ON -DCMAKE_CUDA_FLAGS=-DDQ_I8_TIMING=1
    cmake --build build/cuda-timeline --target decoquant_cuda
    DECOQUANT_CUDA_LIB=$PWD/build/cuda-timeline/ggml_ext/libdecoquant_cuda.so \\
        python bench/attn_cuda_timeline.py --json timeline.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os

import attn_cuda as bench
import numpy as np
import torch
from decoquant import reference as R

WARPS = 11  # DQ_I8_FW
MAX_CTAS = 2048


def read_times(lib: ctypes.CDLL) -> tuple[np.ndarray, np.ndarray]:
    tc = (ctypes.c_ulonglong * (3 * MAX_CTAS))()
    tw = (ctypes.c_ulonglong * (2 * MAX_CTAS * WARPS))()
    if lib.dq_dbg_timing(tc, tw) != 0:
        raise RuntimeError("dq_dbg_timing failed")
    return (np.array(tc, dtype=np.int64).reshape(MAX_CTAS, 3),
            np.array(tw, dtype=np.int64).reshape(MAX_CTAS, WARPS, 2))


def quantiles(x: np.ndarray) -> dict:
    return {k: round(float(np.quantile(x, q)), 2) for k, q in (("min", 0), ("p10", 0.1), ("med", 0.5),
                                                                ("p90", 0.9), ("max", 1))}


def one_case(lib: ctypes.CDLL, preset: str, chunk: int, batch: int, ctx: int) -> dict:
    n_head, nkv, hd = bench.SHAPES["llama3-8b"]
    opts = R.options(4, preset, chunk=chunk)
    calls = bench.dq_calls(n_head, nkv, hd, ctx, batch, opts, bench.base_blocks(opts, nkv, hd), "default")
    kernel = bench.kernel_name(calls[0], n_head, nkv, "default")
    if kernel != "int8":
        raise SystemExit(f"the timeline covers the int8 kernel only, this case runs {kernel}")
    for i in range(32):
        calls[i % len(calls)]()
    torch.cuda.synchronize()
    for i in range(16):  # back to back, like consecutive layers: the last launch is read
        calls[i % len(calls)]()
    torch.cuda.synchronize()
    tc, tw = read_times(lib)
    n = calls[0].splits * nkv * batch
    tc, tw = tc[:n], tw[:n]
    t0 = tc[:, 0].min()
    warp_done = tw[:, :, 1]
    first_k = tw[:, :, 0][tw[:, :, 0] > 0]
    us = 1e-3
    return {"preset": preset, "chunk": chunk, "batch": batch, "ctx": ctx, "ctas": n, "splits": calls[0].splits,
            "span_us": round(float(tc[:, 1].max() - t0) * us, 2),
            "first_k_landed_us": quantiles((first_k - t0) * us),
            "warp_done_us": quantiles((warp_done.ravel() - t0) * us),
            "cta_end_us": quantiles((tc[:, 1] - t0) * us),
            "warp_done_spread_in_cta_us": quantiles((warp_done.max(1) - warp_done.min(1)) * us),
            "merge_after_last_warp_us": quantiles((tc[:, 1] - warp_done.max(1)) * us),
            # the same work ends later on some SMs, the same ones launch after launch (where an SM
            # ran several CTAs: its last)
            "cta_end_us_by_sm": {int(sm): round(float(e - t0) * us, 2) for sm, e in sorted(zip(tc[:, 2], tc[:, 1]))}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("--ctx", type=int, default=32768)
    args = ap.parse_args()
    lib = ctypes.CDLL(os.environ["DECOQUANT_CUDA_LIB"])
    if not hasattr(lib, "dq_dbg_timing"):
        raise SystemExit("this libdecoquant_cuda has no timeline: build it with -DDQ_I8_TIMING=1 (see the docstring)")
    rows = [one_case(lib, p, c, b, args.ctx) for p, c, b in (("paper", 128, 1), ("paper", 128, 8), ("default", 256, 8))]
    for r in rows:
        print(f"{r['preset']:7s} b{r['batch']}: span {r['span_us']:5.1f} us  first K {r['first_k_landed_us']}")
        for k in ("warp_done_us", "cta_end_us", "warp_done_spread_in_cta_us", "merge_after_last_warp_us"):
            print(f"   {k:28s} {r[k]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
