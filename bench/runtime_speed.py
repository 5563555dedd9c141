"""Prefill and decode speed: our runtime vs llama.cpp (llama-cpp-python on the same ggml), side by side.

A `--prompt`-token prompt from sotu.txt, then `--decode` tokens one at a time (teacher-forced from the text, so
no sampler runs in either). Repeats are interleaved (llama.cpp, ours, llama.cpp, ...) and medians reported.

    python bench/runtime_speed.py                            # SmolLM2-135M and Qwen2.5-Coder-1.5B, 2 threads
    python bench/runtime_speed.py --models smollm2-135m-instruct --repeats 5 --configs f16 dq4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import parity  # noqa: E402

CONFIGS = {
    "f16": dict(kv_cache="f16", attn="dq"),
    "f16-ggmlfa": dict(kv_cache="f16", attn="ggml"),
    "dq4": dict(kv_cache="decoquant", kv_bits_k=4, kv_bits_v=4),
}


def time_run(eval_prompt, eval_one, prompt, rest) -> tuple[float, float]:
    t0 = time.perf_counter()
    eval_prompt(prompt)
    t1 = time.perf_counter()
    for t in rest:
        eval_one(t)
    t2 = time.perf_counter()
    return len(prompt) / (t1 - t0), len(rest) / (t2 - t1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "qwen2.5-coder-1.5b-instruct"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=1000)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--configs", nargs="+", default=["f16", "dq4"], choices=sorted(CONFIGS))
    args = ap.parse_args()

    from decoquant import Engine

    llama_cpp = parity.import_llama_cpp()
    for m in args.models:
        path = str(parity.MODELS_DIR / f"{m}.gguf")
        if not Path(path).exists():
            print(f"{m}: missing, skipped", file=sys.stderr)
            continue
        llm = llama_cpp.Llama(path, n_ctx=args.n_ctx, n_batch=512, n_ubatch=512, n_threads=args.threads,
                              n_threads_batch=args.threads, flash_attn=True, verbose=False,
                              type_k=llama_cpp.GGML_TYPE_F16, type_v=llama_cpp.GGML_TYPE_F16)
        toks = llm.tokenize(parity.TEXT.read_text().encode(), add_bos=True)[: args.prompt + args.decode]
        prompt, rest = toks[: args.prompt], toks[args.prompt:]
        engines = {c: Engine(path, n_ctx=args.n_ctx, n_batch=512, n_threads=args.threads, **CONFIGS[c])
                   for c in args.configs}
        res: dict[str, list[tuple[float, float]]] = {"llama.cpp": []} | {c: [] for c in args.configs}

        def run_llama() -> tuple[float, float]:
            llm.reset()
            return time_run(llm.eval, lambda t: llm.eval([t]), prompt, rest)

        def run_ours(e: Engine) -> tuple[float, float]:
            e.reset()
            return time_run(e.eval, lambda t: e.eval([t]), prompt, rest)

        run_llama()  # warm-up (page cache, thread pools)
        for e in engines.values():
            run_ours(e)
        for _ in range(args.repeats):
            res["llama.cpp"].append(run_llama())
            for c, e in engines.items():
                res[c].append(run_ours(e))
        base_p = statistics.median(r[0] for r in res["llama.cpp"])
        base_d = statistics.median(r[1] for r in res["llama.cpp"])
        for name, rs in res.items():
            p = statistics.median(r[0] for r in rs)
            d = statistics.median(r[1] for r in rs)
            print(json.dumps({"model": m, "impl": name, "threads": args.threads, "prefill_tok_s": round(p, 1),
                              "decode_tok_s": round(d, 1), "prefill_vs_llama": round(p / base_p, 3),
                              "decode_vs_llama": round(d / base_d, 3)}), flush=True)
        for e in engines.values():
            e.close()
        del llm
    return 0


if __name__ == "__main__":
    sys.exit(main())
