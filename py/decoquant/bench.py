"""`decoquant bench`: prefill and decode speed, peak RSS and KV bytes; the longest context a KV budget holds.

    decoquant bench --model smollm2-135m-instruct --text sotu.txt --contexts 512,4096,16384 --repeats 3
    decoquant bench --max-context --memory 2GiB --kv f16,dq4,dq2,llama:f16,llama:q8_0,llama:q4_0

Speed at context C: a fresh cache is filled with C tokens (prefill, timed), then --decode tokens are
evaluated one at a time (decode, timed; teacher-forced, no sampler). Every (cache, context, repeat) runs
in its own subprocess, so the peak RSS is that configuration's; repeats are interleaved (all caches at
one context, then the next context, then the next repeat) and reported as medians with min-max, and as
ratios to llama.cpp's f16 cache.

--max-context: for each cache, the longest context whose KV cache fits in --memory, computed from the
exact bytes per token of the format (decoquant.kvspec), then checked by allocating it (and one token
more) in a subprocess; the allocated bytes are read back from the runtime (ours) or llama.cpp's log.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import _report, kvspec, runners, textdata

DEFAULT_KV = "f16,dq4,llama:f16,llama:q8_0,llama:q4_0"
DEFAULT_KV_MAX = "f16,dq4,dq2,llama:f16,llama:q8_0,llama:q4_0"
DEFAULT_CONTEXTS = "512,4096,16384,32768"
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 10**6, "mb": 10**6, "mib": 1 << 20,
          "g": 10**9, "gb": 10**9, "gib": 1 << 30, "t": 10**12, "tb": 10**12, "tib": 1 << 40}


def parse_bytes(s: str | int) -> int:
    """'2GiB', '1.5G', '512MiB', '2000000000' -> bytes."""
    if isinstance(s, int):
        return s
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", s)
    if not m or m[2].lower() not in _UNITS:
        raise ValueError(f"memory size {s!r}: expected a number with an optional unit (B, KiB, MiB, GiB, KB, MB, GB)")
    n = int(float(m[1]) * _UNITS[m[2].lower()])
    if n <= 0:
        raise ValueError(f"memory size {s!r} must be > 0")
    return n


def _ints(s: str | Sequence[int]) -> list[int]:
    vals = [int(x) for x in s.split(",") if x.strip()] if isinstance(s, str) else [int(x) for x in s]
    if not vals or min(vals) < 1:
        raise ValueError(f"contexts must be positive integers, got {s!r}")
    return vals


# ------------------------------------------------------------------------------- the subprocess


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    """One configuration in a fresh process: 'speed' (prefill C, decode N) or 'alloc' (create, run 8 tokens)."""
    from ._llamacpp import LlamaModel, kv_bytes_from_log

    spec = kvspec.parse(job["kv"])
    path = job["model"]
    llm = LlamaModel(path) if spec.is_llama else None
    rss0 = _rss()
    log: list[str] = []
    if job["mode"] == "alloc":
        r = runners.open_runner(spec, path, job["n_ctx"], job["threads"], llm, capture_log=log)
        rss1 = _rss()
        r.eval(list(range(1, 9)))  # the context computes, not only allocates
        out = {"n_ctx": r.n_ctx, "kv_bytes": r.kv_bytes, "kv_bytes_log": kv_bytes_from_log(log),
               "rss_context": rss1 - rss0, "peak_rss": _report.peak_rss()}
        r.close()
        return out
    toks = np.load(job["tokens"]).tolist()
    c, n = job["ctx"], job["decode"]
    r = runners.open_runner(spec, path, c + n, job["threads"], llm)
    r.eval(toks[:8])  # warm-up: thread pool, compute buffers
    r.reset()
    t0 = time.perf_counter()
    r.eval(toks[:c])
    t1 = time.perf_counter()
    steps = []
    for t in toks[c:c + n]:
        s = time.perf_counter()
        r.eval([t])
        steps.append(time.perf_counter() - s)
    t2 = time.perf_counter()
    out = {"prefill_s": t1 - t0, "decode_s": t2 - t1, "prefill_tok_s": c / (t1 - t0), "decode_tok_s": n / (t2 - t1),
           "decode_step_median_ms": 1e3 * statistics.median(steps), "kv_bytes": r.kv_bytes, "n_ctx": r.n_ctx,
           "peak_rss": _report.peak_rss()}
    r.close()
    return out


def _spawn(job: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1])] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    p = subprocess.run([sys.executable, "-m", "decoquant.bench", "--worker", json.dumps(job)],
                       check=False, capture_output=True, text=True, env=env)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"bench worker {job['kv']} failed (exit {p.returncode}): " + " | ".join(tail))
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------- speed


def _bench_tokens(model: Any, text: str | os.PathLike | None, n: int) -> tuple[np.ndarray, dict[str, Any]]:
    if text:
        body, info = textdata.load(text)
        return np.asarray(textdata.first_tokens(model, body, n), np.int32), {**info, "sha256": _report.sha256(
            info["path"])}
    rng = np.random.default_rng(0)  # no text: random ids (speed does not depend on the tokens)
    return rng.integers(100, min(model.n_vocab, 30000), n).astype(np.int32), {"path": None, "random": True}


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def run(model: str | os.PathLike | None = None, kv: str | Sequence[str] = DEFAULT_KV,
        contexts: str | Sequence[int] = DEFAULT_CONTEXTS, decode: int = 32, repeats: int = 3,
        threads: int | None = None, text: str | os.PathLike | None = None, progress: bool = True) -> dict[str, Any]:
    """Speed, peak RSS and KV bytes per cache and context (see the module doc); the JSON-able report."""
    from ._llamacpp import LlamaModel

    specs = kvspec.parse_list(kv)
    ctxs = sorted(set(_ints(contexts)))
    if decode < 1 or repeats < 1:
        raise ValueError(f"decode and repeats must be >= 1, got {decode}, {repeats}")
    threads = threads or os.cpu_count() or 1
    path = runners.resolve_model(model)
    vocab = LlamaModel(path, vocab_only=True)
    skipped = [c for c in ctxs if vocab.n_ctx_train and c + decode > vocab.n_ctx_train]
    ctxs = [c for c in ctxs if c not in skipped]
    if not ctxs:
        raise ValueError(f"no context fits the model's training context {vocab.n_ctx_train} (got {skipped})")
    toks, text_info = _bench_tokens(vocab, text, max(ctxs) + decode)
    t_start = time.perf_counter()
    load0 = _report.machine()["loadavg"]
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {(s.name, c): [] for s in specs for c in ctxs}
    with tempfile.TemporaryDirectory() as td:
        tok_file = str(Path(td) / "tokens.npy")
        np.save(tok_file, toks)
        base = {"mode": "speed", "model": str(path), "tokens": tok_file, "decode": decode, "threads": threads}
        work = sum(c + decode for c in ctxs) * len(specs) * (repeats + 1)
        prog = _report.Progress(work, enabled=progress)
        try:
            for s in specs:  # warm-up round, not recorded: the model file in the page cache
                prog.step(f"warm-up {s.name} @ {ctxs[0]}")
                _spawn({**base, "kv": s.name, "ctx": ctxs[0]})
                prog.update(sum(c + decode for c in ctxs))
            for rep in range(repeats):
                for c in ctxs:
                    k = rep % len(specs)  # rotate the order: no cache always runs first
                    for s in specs[k:] + specs[:k]:
                        prog.step(f"{s.name} @ {c} (repeat {rep + 1}/{repeats})")
                        runs[(s.name, c)].append(_spawn({**base, "kv": s.name, "ctx": c}))
                        prog.update(c + decode)
        finally:
            prog.close()

    results = []
    base_name = next((s.name for s in specs if s.is_llama and s.ggml_type == "f16"), None)
    for c in ctxs:
        ref = runs.get((base_name, c)) if base_name else None
        for s in specs:
            rs = runs[(s.name, c)]
            row: dict[str, Any] = {"kv": s.name, "backend": s.backend, "ctx": c, "decode_tokens": decode,
                                   "prefill_tok_s": _stats([r["prefill_tok_s"] for r in rs]),
                                   "decode_tok_s": _stats([r["decode_tok_s"] for r in rs]),
                                   "decode_step_median_ms": statistics.median(r["decode_step_median_ms"] for r in rs),
                                   "peak_rss": max(r["peak_rss"] for r in rs), "kv_bytes": rs[0]["kv_bytes"],
                                   "n_ctx": rs[0]["n_ctx"], "bits_per_value": s.bits_per_value(vocab.n_head_kv,
                                                                                               vocab.head_dim)}
            if ref:
                for key in ("prefill_tok_s", "decode_tok_s"):
                    row[key.replace("tok_s", "vs_llama_f16")] = (row[key]["median"] /
                                                                 statistics.median(r[key] for r in ref))
            results.append(row)
    return {"schema": "decoquant.bench/1",
            "config": {"model": str(model) if model is not None else path.stem, "kv": [s.name for s in specs],
                       "contexts": ctxs, "contexts_skipped": skipped, "decode": decode, "repeats": repeats,
                       "threads": threads, "n_batch": 512,
                       "method": "each (cache, context, repeat) in a fresh subprocess; prefill C tokens into an "
                                 "empty cache, then decode one token at a time; interleaved repeats"},
            "model": _model_info(path, vocab), "text": text_info, "versions": _report.versions(),
            "machine": {**_report.machine(), "loadavg_start": load0},
            "seconds": round(time.perf_counter() - t_start, 1), "results": results}


def _model_info(path: Path, vocab: Any) -> dict[str, Any]:
    return {"name": path.stem, "path": str(path), "sha256": _report.sha256(path), "size_bytes": path.stat().st_size,
            "arch": vocab.arch, "n_layer": vocab.n_layer, "n_head_kv": vocab.n_head_kv, "head_dim": vocab.head_dim,
            "n_ctx_train": vocab.n_ctx_train}


# ------------------------------------------------------------------------------- max context


def longest_fitting(bytes_at: Any, budget: int, hi: int = 1 << 24) -> int:
    """The largest n in [0, hi] with bytes_at(n) <= budget (bytes_at non-decreasing); 0 if none."""
    lo = 0
    if bytes_at(1) > budget:
        return 0
    lo = 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if bytes_at(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def max_context(model: str | os.PathLike | None = None, kv: str | Sequence[str] = DEFAULT_KV_MAX,
                memory: str | int = "2GiB", threads: int | None = None, check: bool = True,
                progress: bool = True) -> dict[str, Any]:
    """The longest context whose KV cache fits in `memory`, per cache (see the module doc)."""
    from ._llamacpp import LlamaModel

    specs = kvspec.parse_list(kv)
    budget = parse_bytes(memory)
    threads = threads or os.cpu_count() or 1
    path = runners.resolve_model(model)
    vocab = LlamaModel(path, vocab_only=True)
    shape = (vocab.n_layer, vocab.n_head_kv, vocab.head_dim)
    results = []
    prog = _report.Progress(len(specs), unit="caches", enabled=progress)
    try:
        for s in specs:
            prog.step(f"{s.name}")
            n = longest_fitting(lambda x, s=s: s.kv_bytes(x, *shape, model_path=path), budget)
            row: dict[str, Any] = {"kv": s.name, "backend": s.backend,
                                   "bits_per_value": s.bits_per_value(vocab.n_head_kv, vocab.head_dim),
                                   "kv_bytes_per_token": s.kv_bytes_per_token(*shape), "max_context": n,
                                   "kv_bytes_predicted": s.kv_bytes(n, *shape, model_path=path),
                                   "beyond_n_ctx_train": bool(vocab.n_ctx_train and n > vocab.n_ctx_train)}
            if check and n > 0:
                base = {"mode": "alloc", "model": str(path), "kv": s.name, "threads": threads}
                at, over = _spawn({**base, "n_ctx": n}), _spawn({**base, "n_ctx": n + 1})
                measured = at["kv_bytes_log"] if s.is_llama else at["kv_bytes"]
                measured_over = over["kv_bytes_log"] if s.is_llama else over["kv_bytes"]
                tol = 2**20 // 100 * 4 if s.is_llama else 0  # llama.cpp logs MiB with 2 decimals
                row.update(kv_bytes_allocated=measured, kv_bytes_allocated_next=measured_over,
                           rss_context=at["rss_context"], peak_rss=at["peak_rss"], n_ctx_allocated=at["n_ctx"],
                           verified=bool(measured is not None and measured <= budget + tol
                                         and abs(measured - row["kv_bytes_predicted"]) <= tol
                                         and measured_over is not None and measured_over > budget))
            results.append(row)
            prog.update(1)
    finally:
        prog.close()
    return {"schema": "decoquant.bench.max_context/1",
            "config": {"model": str(model) if model is not None else path.stem, "kv": [s.name for s in specs],
                       "memory": str(memory), "budget_bytes": budget, "checked": check},
            "model": _model_info(path, vocab), "versions": _report.versions(), "machine": _report.machine(),
            "results": results}


# ------------------------------------------------------------------------------- output


def _mib(b: float) -> str:
    return f"{b / 2**20:.1f}"


def markdown(report: dict[str, Any]) -> str:
    m = report["model"]["name"]
    if report["schema"].endswith("max_context/1"):
        title = (f"{m}: longest context with the KV cache in {report['config']['memory']} "
                 f"({report['config']['budget_bytes']} bytes)")
        out = [title, "",
               "| cache | bits/value | KV bytes/token | max context | KV MiB allocated | checked |",
               "|---|---|---|---|---|---|"]
        for r in report["results"]:
            chk = "yes" if r.get("verified") else ("no" if "verified" in r else "not run")
            alloc = r.get("kv_bytes_allocated") or r["kv_bytes_predicted"]
            note = " (> n_ctx_train)" if r["beyond_n_ctx_train"] else ""
            out.append(f"| {r['kv']} | {r['bits_per_value']:.3f} | {r['kv_bytes_per_token']:.0f} | "
                       f"{r['max_context']}{note} | {_mib(alloc)} | {chk} |")
        return "\n".join(out)
    cfg = report["config"]
    title = (f"{m}: {cfg['threads']} threads, {cfg['repeats']} interleaved repeats, decode {cfg['decode']} tokens; "
             "median (min-max) tokens/s")
    header = ("| cache | context | prefill tok/s | decode tok/s | prefill / llama f16 | decode / llama f16 | "
              "KV MiB | peak RSS MiB |")
    out = [title, "", header, "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        p, d = r["prefill_tok_s"], r["decode_tok_s"]
        rp = f"{r['prefill_vs_llama_f16']:.2f}×" if "prefill_vs_llama_f16" in r else "-"
        rd = f"{r['decode_vs_llama_f16']:.2f}×" if "decode_vs_llama_f16" in r else "-"
        out.append(f"| {r['kv']} | {r['ctx']} | {p['median']:.1f} ({p['min']:.1f}–{p['max']:.1f}) | "
                   f"{d['median']:.1f} ({d['min']:.1f}–{d['max']:.1f}) | {rp} | {rd} | {_mib(r['kv_bytes'])} | "
                   f"{_mib(r['peak_rss'])} |")
    return "\n".join(out)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("-m", "--model", default=None, metavar="NAME|PATH",
                    help="a .gguf file or a registry name (default: the registry's default model)")
    ap.add_argument("--kv", default=None, metavar="LIST",
                    help=f"comma-separated caches (as in decoquant eval); default {DEFAULT_KV} "
                         f"(--max-context: {DEFAULT_KV_MAX})")
    ap.add_argument("--contexts", default=DEFAULT_CONTEXTS, metavar="LIST",
                    help=f"contexts to fill before decoding (those beyond the model's are skipped); "
                         f"default {DEFAULT_CONTEXTS}")
    ap.add_argument("--decode", type=int, default=32, metavar="N", help="decode steps timed per run; default 32")
    ap.add_argument("--repeats", type=int, default=3, metavar="N", help="interleaved repeats; default 3")
    ap.add_argument("--text", default=None, metavar="FILE", help="tokens from this text (default: random ids)")
    ap.add_argument("-t", "--threads", type=int, default=None, metavar="N", help="CPU threads; default all")
    ap.add_argument("--max-context", action="store_true",
                    help="instead: the longest context whose KV cache fits in --memory, per cache")
    ap.add_argument("--memory", default="2GiB", metavar="SIZE", help="KV budget for --max-context; default 2GiB")
    ap.add_argument("--no-check", action="store_true", help="--max-context: compute only, do not allocate")
    ap.add_argument("--json", default=None, metavar="FILE", help="write every number, the config and versions")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)


def _cmd(args: argparse.Namespace) -> int:
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    if args.max_context:
        rep = max_context(args.model, args.kv or DEFAULT_KV_MAX, args.memory,
                          args.threads, check=not args.no_check, progress=not args.no_progress)
    else:
        rep = run(args.model, args.kv or DEFAULT_KV, args.contexts, args.decode, args.repeats, args.threads,
                  args.text, progress=not args.no_progress)
    _report.print_and_save(rep, markdown(rep), args.json)
    return 0


def add_parser(sub: Any) -> None:
    """`decoquant bench` (see decoquant.cli)."""
    p = sub.add_parser("bench", help="prefill/decode speed, RSS and KV bytes vs llama.cpp; --max-context",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(fn=_cmd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="decoquant bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return _cmd(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
