"""Fused DQ attention vs the project's own FP16 attention in C, one decode query (CPU).

Both run through dq_attn_bench (same threading, same flash-decoding split and merge); the
FP16 cache is token-major like llama.cpp's and cut into the same chunk-sized segments.
Rounds are interleaved; medians and ranges of per-call times are reported.

    python bench/attn_cpu.py --json docs/results/attn_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics

import decoquant
import numpy as np
from decoquant._lib import ffi, lib

SHAPES = {"smollm2-135m": (9, 3, 64), "qwen2.5-1.5b": (12, 2, 128)}


def make_params(q: np.ndarray, kc: decoquant.Compressed, vc: decoquant.Compressed | None,
                k16: np.ndarray | None, v16: np.ndarray | None, chunk: int, keep: list) -> object:
    nq, hq, hd = q.shape
    if k16 is not None:
        n = len(k16) // chunk
        segs = ffi.new("dq_segment[]", n)
        for i in range(n):
            segs[i].k = ffi.from_buffer(k16[i * chunk:(i + 1) * chunk])
            segs[i].v = ffi.from_buffer(v16[i * chunk:(i + 1) * chunk])
            segs[i].n_tokens, segs[i].pos0, segs[i].kind = chunk, i * chunk, 0
    else:
        n = len(kc.blocks)
        segs = ffi.new("dq_segment[]", n)
        for i, (kb, vb) in enumerate(zip(kc.blocks, vc.blocks)):
            segs[i].k, segs[i].v = ffi.from_buffer(kb.data), ffi.from_buffer(vb.data)
            segs[i].n_tokens, segs[i].pos0, segs[i].kind = kb.n_tokens, kb.pos0, 1
    out = np.empty_like(q)
    p = ffi.new("dq_attn_params *")
    p.cfg_k = p.cfg_v = kc.cfg
    if vc is not None:
        p.cfg_v = vc.cfg
    p.n_head, p.n_q, p.q = hq, nq, ffi.from_buffer("float[]", q)
    p.scale, p.segs, p.n_segs, p.out = 1.0 / np.sqrt(hd), segs, n, ffi.from_buffer("float[]", out)
    keep += [segs, out, q]
    return p


def time_calls(p: object, threads: int, iters: int) -> list[float]:
    times = np.zeros(iters)
    work = np.zeros(lib.dq_attn_work_size(p, threads), np.float32)
    p.work = ffi.from_buffer("float[]", work)
    assert lib.dq_attn_bench(p, threads, iters, ffi.from_buffer("double[]", times)) == 0
    p.work = ffi.NULL
    return times.tolist()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctx", default="4096,16384")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for name, (hq, hkv, hd) in SHAPES.items():
        for ctx in map(int, args.ctx.split(",")):
            k = rng.standard_normal((ctx, hkv, hd)).astype(np.float32)
            v = rng.standard_normal((ctx, hkv, hd)).astype(np.float32)
            q = rng.standard_normal((1, hq, hd)).astype(np.float32)
            kc = decoquant.compress(k, args.bits, args.preset, chunk=args.chunk)
            vc = decoquant.compress(v, args.bits, args.preset, chunk=args.chunk)
            k16, v16 = k.astype(np.float16), v.astype(np.float16)
            keep: list = []
            p16 = make_params(q, kc, None, k16, v16, args.chunk, keep)
            pdq = make_params(q, kc, vc, None, None, args.chunk, keep)
            for th in map(int, args.threads.split(",")):
                t16: list[float] = []
                tdq: list[float] = []
                for _ in range(args.rounds):  # interleaved rounds
                    t16 += time_calls(p16, th, args.iters)
                    tdq += time_calls(pdq, th, args.iters)
                m16, mdq = statistics.median(t16), statistics.median(tdq)
                row = dict(shape=name, ctx=ctx, threads=th, f16_us=m16 * 1e6, dq_us=mdq * 1e6,
                           f16_us_range=[min(t16) * 1e6, max(t16) * 1e6], dq_us_range=[min(tdq) * 1e6, max(tdq) * 1e6],
                           speedup=m16 / mdq, f16_bytes=int(k16.nbytes + v16.nbytes), dq_bytes=kc.nbytes + vc.nbytes,
                           dq_bits_per_value=(kc.bits_per_value + vc.bits_per_value) / 2)
                rows.append(row)
                print(f"{name:14s} ctx {ctx:6d} threads {th}: f16 {row['f16_us']:8.1f} us  dq{args.bits} "
                      f"{row['dq_us']:8.1f} us  speedup {row['speedup']:.2f}x  "
                      f"(bytes {row['f16_bytes'] / 2**20:.1f} -> {row['dq_bytes'] / 2**20:.2f} MiB)", flush=True)
    if args.json:
        meta = dict(kernels=decoquant.kernels(), machine=platform.processor() or platform.machine(),
                    preset=args.preset, bits=args.bits, chunk=args.chunk, rounds=args.rounds, iters=args.iters)
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, results=rows), f, indent=1)


if __name__ == "__main__":
    main()
