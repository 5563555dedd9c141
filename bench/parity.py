"""f16 parity: our runtime's logits vs llama.cpp's (through llama-cpp-python, same ggml) on sotu.txt.

For each model: tokenize ../shared/data/sotu.txt, take `--chunks` chunks of `--ctx` tokens, evaluate each
chunk from an empty cache in both (llama.cpp: f16 KV, flash attention on, logits for every token) and
report the mean KL divergence KL(llama.cpp || ours) and the top-1 agreement over all tokens.

    python bench/parity.py                       # SmolLM2-135M, Qwen2.5-Coder-1.5B, Gemma-3-270M, 4 x 1024
    python bench/parity.py --models smollm2-135m-instruct --chunks 1 --ctx 512
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = Path(os.environ.get("DECOQUANT_MODELS", Path.home() / ".cache/decoquant/models"))
TEXT = ROOT.parent / "shared/data/sotu.txt"
DEFAULT_MODELS = ["smollm2-135m-instruct", "qwen2.5-coder-1.5b-instruct", "gemma-3-270m"]


def import_llama_cpp():
    """llama_cpp on decoquant's ggml (installed package), or LLAMA_CPP_LIB_PATH in a dev tree."""
    from decoquant import _llama

    try:
        return _llama.import_llama_cpp()
    except ImportError:
        if os.environ.get("LLAMA_CPP_LIB_PATH"):
            import llama_cpp

            return llama_cpp
        raise


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare(ref: np.ndarray, ours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-token KL(ref || ours) and top-1 agreement (in blocks of rows: big vocabularies)."""
    kld = np.empty(len(ref))
    for i in range(0, len(ref), 64):
        lp, lq = log_softmax(ref[i:i + 64]), log_softmax(ours[i:i + 64])
        kld[i:i + 64] = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    return kld, ref.argmax(-1) == ours.argmax(-1)


def run(model: str, n_chunks: int, ctx: int, n_threads: int, text: Path = TEXT, attn: str = "dq") -> dict:
    from decoquant import Engine

    llama_cpp = import_llama_cpp()
    path = str(MODELS_DIR / f"{model}.gguf")
    llm = llama_cpp.Llama(path, n_ctx=ctx, n_batch=512, n_ubatch=512, n_threads=n_threads,
                          n_threads_batch=n_threads, flash_attn=True, logits_all=True, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F16, type_v=llama_cpp.GGML_TYPE_F16)
    toks = llm.tokenize(text.read_text().encode(), add_bos=True)
    need = n_chunks * ctx
    if len(toks) < need:
        toks = (toks * (need // len(toks) + 1))[:need]
    eng = Engine(path, n_ctx=ctx, n_batch=512, n_threads=n_threads, kv_cache="f16", attn=attn)
    klds, agree = [], []
    t_ref = t_ours = 0.0
    for c in range(n_chunks):
        chunk = toks[c * ctx:(c + 1) * ctx]
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(chunk)
        ref = np.array(llm.scores[:len(chunk)], dtype=np.float32)
        t_ref += time.perf_counter() - t0
        eng.reset()
        t0 = time.perf_counter()
        ours = eng.eval(chunk, logits_all=True)
        t_ours += time.perf_counter() - t0
        k, a = compare(ref, ours)
        klds.append(k)
        agree.append(a)
    k = np.concatenate(klds)
    a = np.concatenate(agree)
    del llm
    eng.close()
    return {"model": model, "attn": attn, "chunks": n_chunks, "ctx": ctx, "tokens": int(k.size), "mean_kld": float(k.mean()),
            "max_kld": float(k.max()), "top1": float(a.mean()), "s_llama_cpp": round(t_ref, 2), "s_ours": round(t_ours, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--attn", nargs="+", default=["dq", "ggml"],
                    help="our f16 attention: dq (dq_attn custom ops) and/or ggml (ggml_flash_attn_ext)")
    args = ap.parse_args()
    ok = True
    for m in args.models:
        if not (MODELS_DIR / f"{m}.gguf").exists():
            print(f"{m}: missing, skipped", file=sys.stderr)
            continue
        for attn in args.attn:
            r = run(m, args.chunks, args.ctx, args.threads, attn=attn)
            r["pass"] = r["mean_kld"] <= 2e-4 and r["top1"] >= 0.99
            ok &= r["pass"]
            print(json.dumps(r), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
