#!/usr/bin/env python3
"""llama.cpp reference perplexity, computed the way `llama-perplexity` does.

The text (from a character offset) is tokenized with the model's add_bos
setting; it is cut into chunks of --n-ctx tokens; when the model adds BOS, the
first token of each chunk is replaced by BOS; each chunk is decoded in one
batch from an empty KV cache; the NLL is summed over the second half of each
chunk (the logits at positions n_ctx/2 .. n_ctx-2 predicting the next token).

Example (llama-perplexity -c 1024 --chunks 2 -fa on -ctk f16 -ctv f16):
  python bench/ref_perplexity.py --model ~/.cache/decoquant/models/smollm2-135m-instruct.gguf \\
      --text /work/shared/data/sotu.txt --n-ctx 1024 --n-chunks 2 --flash-attn
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import sys
import time
from pathlib import Path

import llama_cpp
import numpy as np
from capture_kv import decode, load_model, make_context, quiet_logs, tokens_from_text

KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--text", type=Path, required=True)
    p.add_argument("--offset-chars", type=int, default=0)
    p.add_argument("--n-ctx", type=int, default=1024)
    p.add_argument("--n-chunks", type=int, default=2)
    p.add_argument("--flash-attn", action="store_true")
    p.add_argument("--kv-type", choices=sorted(KV_TYPES), default="f16")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--no-extra-bufts", action="store_true", help="disable weight repacking / AMX buffers")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logs(args.verbose)
    model = load_model(args.model, extra_bufts=not args.no_extra_bufts)
    vocab = llama_cpp.llama_model_get_vocab(model)
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    bos = int(llama_cpp.llama_vocab_bos(vocab))
    n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
    text = args.text.read_text(encoding="utf-8")
    n_ctx = args.n_ctx
    tokens, _ = tokens_from_text(vocab, text, args.offset_chars, n_ctx * args.n_chunks, add_bos)
    kv_type = KV_TYPES[args.kv_type]
    ctx = make_context(model, n_ctx, n_ctx, args.threads, args.flash_attn, kv_type)
    mem = llama_cpp.llama_get_memory(ctx)

    first = n_ctx // 2
    nll = 0.0
    count = 0
    t0 = time.time()
    for c in range(args.n_chunks):
        chunk = tokens[c * n_ctx : (c + 1) * n_ctx]
        batch_toks = list(chunk)
        if add_bos:
            batch_toks[0] = bos
        llama_cpp.llama_memory_clear(mem, True)
        decode(ctx, batch_toks, logits_all=True)
        ptr = llama_cpp.llama_get_logits(ctx)
        logits = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_ctx, n_vocab))
        lg = logits[first : n_ctx - 1].astype(np.float64)
        mx = lg.max(axis=1, keepdims=True)
        lse = mx[:, 0] + np.log(np.exp(lg - mx).sum(axis=1))
        targets = np.asarray(chunk[first + 1 : n_ctx])
        nll += float((lse - lg[np.arange(len(targets)), targets]).sum())
        count += len(targets)
        print(f"[{c + 1}] running ppl = {math.exp(nll / count):.4f}")
    print(
        f"{args.model.name}: ppl = {math.exp(nll / count):.4f} over {count} tokens "
        f"(n_ctx={n_ctx}, chunks={args.n_chunks}, flash_attn={args.flash_attn}, kv={args.kv_type}, "
        f"add_bos={add_bos}) in {time.time() - t0:.1f} s"
    )
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
