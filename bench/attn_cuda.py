"""Fused DQ4 decode attention on the GPU vs torch SDPA (FP16, flash backend), same shapes.

For each head shape x context x batch: one decode query per sequence over `ctx` compressed
tokens (blocks of 128) plus a 64-token FP16 residual window (SDPA gets ctx + 64 FP16 tokens).
Times are CUDA-event medians of single launches, rotating over enough copies of the cache that
nothing is served from L2; `b2b` is the per-call time of back-to-back launches over those copies
(like consecutive layers), `graph` the same calls replayed from one CUDA graph (no Python or launch
work on the host per call, for both sides). Bytes = what the kernel must read once (K and V blocks, residual, q).
Also: decompose-on-append cost (one 128-token chunk for 32 layers x K,V x batch, FP16 input),
amortized per token and compared with one decode step's attention.

    python bench/attn_cuda.py --json docs/results/attn_cuda.json --plot docs/results/attn_cuda.png
    python bench/attn_cuda.py --only llama3-8b:32768:1 --iters 20   # one case (ncu)
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time

import numpy as np
import torch
from decoquant import cuda as dqc
from decoquant import reference as R

SHAPES = {"llama2-7b": (32, 32, 128), "llama3-8b": (32, 8, 128), "qwen2.5-1.5b": (12, 2, 128)}
CTXS = [4096, 8192, 16384, 32768, 65536, 131072]
BATCHES = [1, 4, 8, 16, 32]
RES = 64
CHUNK = 128
PEAK = 4.8e12
ROTATE_BYTES = 512 << 20  # cycle over at least this much data (L2 is 60 MB)
LAYERS = 32


def events_median(fn, iters: int, warm: int = 5) -> float:
    for _ in range(warm):
        fn(0)
    torch.cuda.synchronize()
    times = []
    for i in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(i + 1)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def b2b(fn, n: int, reps: int = 5) -> float:
    fn(0)
    torch.cuda.synchronize()
    best = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for i in range(n):
            fn(i)
        b.record()
        b.synchronize()
        best.append(a.elapsed_time(b) / n)
    return statistics.median(best)


def graph_b2b(fn, n: int, reps: int = 5) -> float | None:
    """Per-call time of n back-to-back calls replayed from one CUDA graph (no host work per call);
    None where the calls cannot be captured."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(n):
            fn(i)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for i in range(n):
                fn(i)
    except RuntimeError as e:
        print(f"graph capture failed: {e}", file=sys.stderr)
        return None
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / n)
    return statistics.median(times)


def base_blocks(opts: R.Options, nkv: int, hd: int, n: int = 16) -> torch.Tensor:
    """n real blocks (GPU decompose of K-like data), to tile a cache of any size."""
    rng = np.random.default_rng(0)
    ch = opts.chunk
    x = rng.standard_normal((n * ch, nkv * hd)).astype(np.float32)
    x[:, rng.choice(nkv * hd, nkv * hd // 32, replace=False)] *= 10
    x += np.linspace(0, 1, n * ch, dtype=np.float32)[:, None]
    xt = torch.from_numpy(x).cuda().view(n, ch, nkv, hd).half()
    return dqc.decompose(xt, opts=opts)


def dq_calls(n_head: int, nkv: int, hd: int, ctx: int, batch: int, opts: R.Options, base: torch.Tensor,
             variant: str, n_split: int = 0) -> list:
    """Prepared launches over enough copies of the cache (>= ROTATE_BYTES) that nothing stays in L2."""
    nb = ctx // opts.chunk
    size = base.shape[1]
    per_copy = 2 * batch * nb * size + 2 * batch * RES * nkv * hd * 2
    copies = max(1, min(16, -(-ROTATE_BYTES // per_copy)))
    need = copies * batch * nb
    reps = -(-need // base.shape[0])
    kb = base.repeat(reps, 1)[:need].contiguous()
    vb = kb.roll(1, 0).contiguous()  # other bytes, same format
    g = torch.Generator(device="cuda").manual_seed(0)
    calls = []
    for c in range(copies):
        q = torch.randn((batch, n_head, hd), device="cuda", generator=g)
        table = [list(range((c * batch + s) * nb, (c * batch + s + 1) * nb)) for s in range(batch)]
        kr = [torch.randn((RES, nkv, hd), device="cuda", generator=g).half() for _ in range(batch)]
        vr = [torch.randn((RES, nkv, hd), device="cuda", generator=g).half() for _ in range(batch)]
        calls.append(dqc.prepare_attention(q, kb, vb, table, opts, opts, k_res=kr, v_res=vr, variant=variant,
                                           n_split=n_split))
    torch.cuda.synchronize()
    return calls


def kernel_name(call, n_head: int, nkv: int, variant: str) -> str:
    return "generic" if call.path != "fast" else ("int8" if n_head // nkv <= 4 and variant != "subnormal" else "fp16")


def dq_case(n_head: int, nkv: int, hd: int, ctx: int, batch: int, opts: R.Options, base: torch.Tensor,
            iters: int, variant: str, n_split: int = 0) -> dict:
    calls = dq_calls(n_head, nkv, hd, ctx, batch, opts, base, variant, n_split)
    copies = len(calls)
    t = events_median(lambda i: calls[i % copies](), iters)
    tb = b2b(lambda i: calls[i % copies](), max(copies, 16), reps=3)
    tg = graph_b2b(lambda i: calls[i % copies](), max(copies, 16))
    nbytes = 2 * batch * (ctx // opts.chunk) * base.shape[1] + 2 * batch * RES * nkv * hd * 2 + batch * n_head * hd * 8
    return {"ms": t, "ms_b2b": tb, "ms_graph": tg, "bytes": nbytes, "splits": calls[0].splits,
            "path": calls[0].path, "kernel": kernel_name(calls[0], n_head, nkv, variant), "copies": copies}


def sdpa_case(n_head: int, nkv: int, hd: int, ctx: int, batch: int, iters: int) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    t_tok = ctx + RES
    per_copy = 2 * batch * nkv * t_tok * hd * 2
    copies = max(1, min(16, -(-ROTATE_BYTES // per_copy)))
    ks = [torch.randn((batch, nkv, t_tok, hd), device="cuda", dtype=torch.float16) for _ in range(copies)]
    vs = [torch.randn((batch, nkv, t_tok, hd), device="cuda", dtype=torch.float16) for _ in range(copies)]
    qs = [torch.randn((batch, n_head, 1, hd), device="cuda", dtype=torch.float16) for _ in range(copies)]
    gqa = n_head != nkv
    backend = None
    for be in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        try:
            with sdpa_kernel(be):
                torch.nn.functional.scaled_dot_product_attention(qs[0], ks[0], vs[0], enable_gqa=gqa)
            backend = be
            break
        except RuntimeError:
            continue
    if backend is None:
        return {"sdpa_ms": None}

    def run(i: int) -> None:
        with sdpa_kernel(backend):
            torch.nn.functional.scaled_dot_product_attention(qs[i % copies], ks[i % copies], vs[i % copies],
                                                             enable_gqa=gqa)

    t = events_median(run, iters)
    tb = b2b(run, max(copies, 16), reps=3)
    tg = graph_b2b(run, max(copies, 16))
    return {"sdpa_ms": t, "sdpa_ms_b2b": tb, "sdpa_ms_graph": tg, "sdpa_bytes": per_copy + batch * n_head * hd * 4,
            "sdpa_backend": str(backend).split(".")[-1]}


def append_case(nkv: int, hd: int, batch: int, opts: R.Options, iters: int = 10) -> dict:
    """One append event: a full chunk for every layer, K and V, every sequence (FP16 input);
    amortized over the chunk's tokens and the layers."""
    n = LAYERS * 2 * batch
    x = torch.randn((n, opts.chunk, nkv, hd), device="cuda").half()
    dqc.decompose(x[:2], opts=opts)
    t = events_median(lambda i: dqc.decompose(x, opts=opts), iters, warm=2)
    return {"append_ms": t, "append_chunks": n, "append_us_per_token_layer": 1e3 * t / (opts.chunk * LAYERS)}


def read_ceiling(nbytes: int, iters: int) -> dict:
    """The same byte count read by a launch that does nothing else (dq_cuda_read_probe), best of a
    few grid shapes, timed like the attention (single / b2b / graph, rotating copies past L2)."""
    n16 = -(-nbytes // 16) * 16
    copies = max(1, min(16, -(-ROTATE_BYTES // n16)))
    buf = torch.randint(0, 255, (copies, n16), dtype=torch.uint8, device="cuda")
    sink = torch.zeros(4, dtype=torch.int32, device="cuda")
    sms = torch.cuda.get_device_properties(0).multi_processor_count

    def launcher(blocks: int, threads: int):
        return lambda i: dqc.read_probe(buf[i % copies], blocks, threads, sink)

    grids = [(sms * per_sm, th) for per_sm in (1, 2, 4, 8) for th in (256, 512, 1024) if per_sm * th <= 2048]
    t_b2b, grid = min((b2b(launcher(*gr), max(copies, 16), reps=3), gr) for gr in grids)
    run = launcher(*grid)
    return {"ceiling_ms": events_median(run, iters), "ceiling_ms_b2b": t_b2b,
            "ceiling_ms_graph": graph_b2b(run, max(copies, 16)), "ceiling_grid": list(grid)}


def fits(n_head: int, nkv: int, hd: int, ctx: int, batch: int, max_gb: float) -> bool:
    fp16 = 2 * batch * nkv * (ctx + RES) * hd * 2
    return fp16 <= max_gb * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("--plot")
    ap.add_argument("--only", help="SHAPE:CTX:BATCH, DQ kernel only (for ncu)")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--splits", type=int, default=0, help="splits per (sequence, KV head); 0: the library's choice")
    ap.add_argument("--preset", default="paper", help="paper (token scales) or default (channel scales)")
    ap.add_argument("--variant", default="default", choices=list(dqc.VARIANTS))
    ap.add_argument("--chunk", type=int, default=CHUNK, help="tokens per block (a multiple of 128 for the fast path)")
    ap.add_argument("--max-gb", type=float, default=36.0, help="skip cases whose FP16 cache is larger")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--ctxs", default=",".join(map(str, CTXS)))
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--no-ceiling", action="store_true", help="skip the read-only launch of the same bytes")
    args = ap.parse_args()
    ok, why = dqc.available()
    if not ok:
        sys.exit(f"CUDA kernels unavailable: {why}")
    opts = R.options(4, args.preset, chunk=args.chunk)
    if args.only:
        name, ctx, batch = args.only.split(":")
        n_head, nkv, hd = SHAPES[name]
        base = base_blocks(opts, nkv, hd)
        r = dq_case(n_head, nkv, hd, int(ctx), int(batch), opts, base, args.iters, args.variant, args.splits)
        print(json.dumps(r))
        return
    rows = []
    t0 = time.time()
    for name in args.shapes.split(","):
        n_head, nkv, hd = SHAPES[name]
        base = base_blocks(opts, nkv, hd)
        app = {b: append_case(nkv, hd, b, opts) for b in (1, 8)}
        for ctx in map(int, args.ctxs.split(",")):
            for batch in map(int, args.batches.split(",")):
                if not fits(n_head, nkv, hd, ctx, batch, args.max_gb):
                    continue
                r = {"shape": name, "n_head": n_head, "n_kv": nkv, "head_dim": hd, "ctx": ctx, "res": RES,
                     "batch": batch}
                r.update(dq_case(n_head, nkv, hd, ctx, batch, opts, base, args.iters, args.variant, args.splits))
                r.update(sdpa_case(n_head, nkv, hd, ctx, batch, args.iters))
                if not args.no_ceiling:
                    r.update(read_ceiling(r["bytes"], args.iters))
                    for k in ("", "_b2b", "_graph"):
                        if r["ms" + k] and r["ceiling_ms" + k]:
                            r["pct_ceiling" + k] = 100 * r["ceiling_ms" + k] / r["ms" + k]
                r["gbps"] = r["bytes"] / r["ms"] / 1e6
                r["pct_peak"] = 100 * r["bytes"] / (r["ms"] * 1e-3) / PEAK
                r["pct_peak_b2b"] = 100 * r["bytes"] / (r["ms_b2b"] * 1e-3) / PEAK
                if r["ms_graph"]:
                    r["pct_peak_graph"] = 100 * r["bytes"] / (r["ms_graph"] * 1e-3) / PEAK
                if r.get("sdpa_ms"):
                    r["speedup"] = r["sdpa_ms"] / r["ms"]
                    r["speedup_b2b"] = r["sdpa_ms_b2b"] / r["ms_b2b"]
                    if r["ms_graph"] and r.get("sdpa_ms_graph"):
                        r["speedup_graph"] = r["sdpa_ms_graph"] / r["ms_graph"]
                    r["sdpa_gbps"] = r["sdpa_bytes"] / r["sdpa_ms"] / 1e6
                if batch in app:
                    a = app[batch]
                    r.update(a)
                    # per token and layer, against one layer's decode attention at this context
                    r["append_pct_of_step"] = 100 * a["append_us_per_token_layer"] / (1e3 * r["ms"])
                rows.append(r)
                torch.cuda.empty_cache()
                print(f"{name:13s} ctx {ctx:6d} b {batch:2d}: dq {r['ms']*1e3:8.1f} us ({r['pct_peak']:5.1f}% peak,"
                      f" b2b {r['ms_b2b']*1e3:8.1f} us {r['pct_peak_b2b']:5.1f}%)"
                      f"  sdpa {r.get('sdpa_ms', 0)*1e3:8.1f} us  x{r.get('speedup', 0):.2f}"
                      f" (b2b x{r.get('speedup_b2b', 0):.2f}, graph {(r['ms_graph'] or 0)*1e3:.1f} us"
                      f" x{r.get('speedup_graph', 0):.2f})  ceiling {r.get('ceiling_ms_graph', 0) * 1e3:.1f} us graph"
                      f" ({r.get('pct_ceiling_graph', 0):.0f}%)  splits {r['splits']} {r['kernel']}", flush=True)
    meta = {"device": torch.cuda.get_device_name(), "date": datetime.date.today().isoformat(),
            "torch": torch.__version__, "lib": dqc.available()[1], "preset": args.preset, "chunk": args.chunk,
            "variant": args.variant, "peak_bytes_per_s": PEAK, "seconds": round(time.time() - t0, 1),
            "note": __doc__.split("\n\n")[0]}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    if args.plot:
        plot(rows, meta, args.plot)


def plot(rows: list[dict], meta: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for name in SHAPES:
        for batch, ls in ((1, "-"), (8, "--"), (32, ":")):
            rr = [r for r in rows if r["shape"] == name and r["batch"] == batch]
            if not rr:
                continue
            x = [r["ctx"] for r in rr]
            axes[0].plot(x, [r["pct_peak"] for r in rr], ls, marker="o", label=f"{name} b{batch}")
            axes[1].plot(x, [r.get("speedup", np.nan) for r in rr], ls, marker="o", label=f"{name} b{batch}")
    for ax, title in ((axes[0], "DQ4 fused decode: bytes read / time, % of 4.8 TB/s"),
                      (axes[1], "speedup vs torch SDPA FP16")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[1].axhline(3.0, color="k", lw=0.8)
    axes[0].axhline(70.0, color="k", lw=0.8)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"{meta['device']}, {meta['date']}, preset {meta['preset']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
