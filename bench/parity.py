"""f16 parity: our runtime's logits vs llama.cpp's (through llama-cpp-python, same ggml) on sotu.txt.

A thin wrapper over `decoquant eval` (decoquant.eval): the reference is llama.cpp's f16 cache (flash
attention on), the candidate our f16 cache with `attn=ggml` (ggml_flash_attn_ext, llama.cpp's own
attention) or `attn=dq` (our dq_attn ops, fp32). Chunks are scored as llama-perplexity scores them
(second half of each chunk; before decoquant eval existed this script compared every token). Same as

    decoquant eval --model M --text ../shared/data/sotu.txt --ctx 1024 --chunks 4 \\
        --ref llama:f16 --kv f16+attn=ggml,f16+attn=dq

    python bench/parity.py                       # SmolLM2-135M, Qwen2.5-Coder-1.5B, Gemma-3-270M, 4 x 1024
    python bench/parity.py --models smollm2-135m-instruct --chunks 1 --ctx 512
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = Path(os.environ.get("DECOQUANT_MODELS", Path.home() / ".cache/decoquant/models"))
TEXT = ROOT.parent / "shared/data/sotu.txt"
DEFAULT_MODELS = ["smollm2-135m-instruct", "qwen2.5-coder-1.5b-instruct", "gemma-3-270m"]


def import_llama_cpp() -> ModuleType:
    from decoquant._llama import import_llama_cpp as imp

    return imp()


def run(model: str, n_chunks: int, ctx: int, n_threads: int, text: Path = TEXT, attn: str = "dq") -> dict:
    from decoquant import eval as dq_eval

    rep = dq_eval.run(MODELS_DIR / f"{model}.gguf", text, ctx, n_chunks, kv=f"f16+attn={attn}", ref="llama:f16",
                      threads=n_threads, progress=False)
    ref, ours = rep["results"]
    return {"model": model, "attn": attn, "chunks": n_chunks, "ctx": ctx, "tokens": ours["n_scored"],
            "mean_kld": ours["kld_mean"], "max_kld": ours["kld_max"], "top1": ours["top1"],
            "s_llama_cpp": ref["seconds"], "s_ours": ours["seconds"]}


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
