"""`decoquant eval`: perplexity and KL divergence of KV caches, ours and llama.cpp's, on the same tokens.

    decoquant eval --model qwen2.5-coder-1.5b-instruct --text sotu.txt --ctx 1024 --chunks 4 \\
        --kv f16,dq4,dq2,llama:q8_0,llama:q4_0 --json out.json
    decoquant eval --model gemma-3-270m --text sotu.txt --doc longest --ctx 16384 --chunks 1   # one long address

Chunks are scored as llama-perplexity scores them: the text is tokenized once (with BOS where the model's
vocab adds one), cut into --chunks chunks of --ctx tokens; when the vocab adds BOS, the first token of every
chunk is replaced by BOS; each chunk runs from an empty cache in batches of 512 tokens, and the logits at
positions ctx/2 .. ctx-2 score the next token (ctx/2 - 1 tokens per chunk). KL divergence is
KL(ref || cache) over the full vocabulary at those positions, against the --ref cache on the same chunk.

Caches (decoquant.kvspec): f16, dqN, paperN, kAvB run on decoquant.Engine; llama:TYPE on llama.cpp through
llama-cpp-python (flash attention, KV type TYPE, rotation as shipped), in this process, on the same ggml.
Our f16 cache with attn=None runs ggml's flash attention: its logits are bit-identical to llama:f16.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _report, kvspec, runners, textdata

DEFAULT_KV = "f16,dq4,dq2,llama:q8_0,llama:q4_0"
_ROWS = 64  # rows per log-softmax block (262k-token vocabularies)
_RAM_LIMIT = 1 << 30  # reference logits above this go to a temporary file


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class _Acc:
    """Per-position NLL, KLD and top-1 agreement of one cache, over all chunks."""

    def __init__(self) -> None:
        self.nll: list[np.ndarray] = []
        self.kld: list[np.ndarray] = []
        self.top1: list[np.ndarray] = []
        self.seconds = 0.0

    def result(self) -> dict[str, float]:
        nll, kld, top1 = (np.concatenate(a) for a in (self.nll, self.kld, self.top1))
        n = nll.size
        ppl = math.exp(nll.mean())
        return {"ppl": ppl, "ppl_se": ppl * float(nll.std()) / math.sqrt(n), "kld_mean": float(kld.mean()),
                "kld_se": float(kld.std()) / math.sqrt(n), "kld_p99": float(np.percentile(kld, 99)),
                "kld_max": float(kld.max()), "top1": float(top1.mean()), "n_scored": int(n)}


def _ref_store(n: int, n_vocab: int) -> np.ndarray:
    if n * n_vocab * 4 <= _RAM_LIMIT:
        return np.empty((n, n_vocab), np.float32)
    return np.memmap(tempfile.TemporaryFile(), dtype=np.float32, mode="w+", shape=(n, n_vocab))


def _score_chunk(runner: runners.Runner, inp: list[int], targets: np.ndarray, first: int, batch: int,
                 ref: np.ndarray, is_ref: bool, acc: _Acc, prog: _report.Progress) -> None:
    """Run one chunk from an empty cache; score positions first .. len(inp)-2 (against ref, or into it)."""
    n_ctx = len(inp)
    runner.reset()
    t0 = time.perf_counter()
    for s in range(0, n_ctx, batch):
        piece = inp[s:s + batch]
        e = s + len(piece)
        if e - 1 < first:  # no scored position in this batch
            runner.eval(piece, logits_all=False)
            prog.update(len(piece))
            continue
        lg = runner.eval(piece, logits_all=True)
        lo, hi = max(first, s), min(e, n_ctx - 1)
        for b in range(lo, hi, _ROWS):
            rows = lg[b - s:min(hi, b + _ROWS) - s]
            i = b - first
            idx = np.arange(i, i + len(rows))
            lq = log_softmax(rows)
            acc.nll.append(-lq[np.arange(len(rows)), targets[idx]])
            if is_ref:
                ref[idx] = rows
                acc.kld.append(np.zeros(len(rows)))
                acc.top1.append(np.ones(len(rows), bool))
            else:
                r = ref[idx]
                lp = log_softmax(r)
                acc.kld.append((np.exp(lp) * (lp - lq)).sum(axis=-1))
                acc.top1.append(r.argmax(-1) == rows.argmax(-1))
        prog.update(len(piece))
    acc.seconds += time.perf_counter() - t0


def run(model: str | os.PathLike | None = None, text: str | os.PathLike = "", ctx: int = 1024, chunks: int = 4,
        kv: str | Sequence[str] = DEFAULT_KV, ref: str = "f16", threads: int | None = None,
        doc: str | int | None = None, batch: int = 512, progress: bool = True) -> dict[str, Any]:
    """Evaluate the caches in `kv` against `ref` (see the module doc); returns the JSON-able report."""
    from ._llamacpp import LlamaModel

    if not text:
        raise ValueError("no text file given (--text FILE)")
    if ctx < 4 or chunks < 1 or batch < 1:
        raise ValueError(f"ctx must be >= 4, chunks >= 1 and batch >= 1, got {ctx}, {chunks}, {batch}")
    specs = kvspec.parse_list(kv)
    ref_spec = kvspec.parse(ref)
    order = [ref_spec] + [s for s in specs if s.name != ref_spec.name]
    threads = threads or os.cpu_count() or 1
    path = runners.resolve_model(model)
    body, text_info = textdata.load(text, doc)

    t_start = time.perf_counter()
    load0 = _report.machine()["loadavg"]
    vocab = LlamaModel(path, vocab_only=True)
    tokens = textdata.first_tokens(vocab, body, ctx * chunks)
    if ctx > vocab.n_ctx_train > 0:
        print(f"decoquant eval: warning: ctx {ctx} > the model's training context {vocab.n_ctx_train}",
              file=sys.stderr)
    llama_model = LlamaModel(path) if any(s.is_llama for s in order) else None
    first = ctx // 2
    n_score = ctx - 1 - first
    accs = {s.name: _Acc() for s in order}
    meta: dict[str, dict[str, float]] = {}
    prog = _report.Progress(chunks * len(order) * ctx, enabled=progress)
    try:
        for c in range(chunks):
            chunk = tokens[c * ctx:(c + 1) * ctx]
            inp = list(chunk)
            if vocab.add_bos:
                inp[0] = vocab.bos  # as llama-perplexity: BOS starts every chunk
            targets = np.asarray(chunk[first + 1:], dtype=np.int64)
            ref_logits = _ref_store(n_score, vocab.n_vocab)
            for spec in order:
                prog.step(f"{spec.name} chunk {c + 1}/{chunks}")
                # one runner at a time (a model's weights are repacked per Engine: ~1.3 GB for a 1.5B model)
                r = runners.open_runner(spec, path, ctx, threads, llama_model, batch)
                try:
                    _score_chunk(r, inp, targets, first, batch, ref_logits, spec is ref_spec, accs[spec.name], prog)
                    meta[spec.name] = {"bits_per_value": r.bits_per_value,
                                       "kv_bytes_per_token": r.kv_bytes_per_token, "kv_bytes": r.kv_bytes}
                finally:
                    r.close()
            del ref_logits
    finally:
        prog.close()
        if llama_model is not None:
            llama_model.close()

    results = []
    for spec in order:
        a = accs[spec.name]
        row: dict[str, Any] = {"kv": spec.name, "backend": spec.backend, **a.result(), **meta[spec.name]}
        row["kv_bytes_per_token_long"] = spec.kv_bytes_per_token(vocab.n_layer, vocab.n_head_kv, vocab.head_dim)
        row["seconds"] = round(a.seconds, 2)
        row["tok_s"] = round(chunks * ctx / a.seconds, 1) if a.seconds else None
        results.append(row)
    return {
        "schema": "decoquant.eval/1",
        "config": {"model": str(model) if model is not None else path.stem, "ctx": ctx,
                   "chunks": chunks, "kv": [s.name for s in specs], "ref": ref_spec.name, "threads": threads,
                   "batch": batch, "doc": doc, "first_scored": first, "scored_per_chunk": n_score,
                   "bos_per_chunk": vocab.add_bos,
                   "scoring": "llama-perplexity: BOS starts each chunk when the vocab adds BOS; logits at "
                              "ctx/2 .. ctx-2 score the next token; KLD(ref || cache) over the full vocabulary",
                   "llama_cpp": "flash_attn on, KV type_k = type_v = TYPE, Hadamard rotation as shipped "
                                "(unless +rot=0), same process and ggml as decoquant"},
        "model": {"name": path.stem, "path": str(path), "sha256": _report.sha256(path),
                  "size_bytes": path.stat().st_size, "arch": vocab.arch, "n_layer": vocab.n_layer,
                  "n_head_kv": vocab.n_head_kv, "head_dim": vocab.head_dim, "n_vocab": vocab.n_vocab,
                  "n_ctx_train": vocab.n_ctx_train},
        "text": {**text_info, "sha256": _report.sha256(text_info["path"]), "tokens_used": len(tokens)},
        "versions": _report.versions(),
        "machine": {**_report.machine(), "loadavg_start": load0},
        "seconds": round(time.perf_counter() - t_start, 1),
        "results": results,
    }


def markdown(report: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    cfg = report["config"]
    head = (f"{report['model']['name']}, ctx {cfg['ctx']} x {cfg['chunks']} chunks"
            f"{'' if cfg.get('doc') is None else ', doc ' + str(report['text'].get('doc'))}, "
            f"{report['results'][0]['n_scored']} scored tokens, KLD vs {cfg['ref']}")
    # KV bytes/token: as allocated at this ctx (ours: with the fp16 residual chunk and sinks), and in the long run
    out = [head, "", "| cache | bits/value | KV bytes/token @ctx | long run | PPL | KLD mean | KLD p99 | top-1 |",
           "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        out.append(f"| {r['kv']} | {r['bits_per_value']:.3f} | {r['kv_bytes_per_token']:.0f} | "
                   f"{r['kv_bytes_per_token_long']:.0f} | "
                   f"{r['ppl']:.3f} ± {r['ppl_se']:.3f} | {r['kld_mean']:.5f} | {r['kld_p99']:.4f} | "
                   f"{100 * r['top1']:.2f}% |")
    return "\n".join(out)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("-m", "--model", default=None, metavar="NAME|PATH",
                    help="a .gguf file or a registry name (default: the registry's default model)")
    ap.add_argument("--text", required=True, metavar="FILE", help="text file (e.g. ../shared/data/sotu.txt)")
    ap.add_argument("--doc", default=None, metavar="longest|I",
                    help="only one blank-line separated document of the text (one address of sotu.txt): "
                         "'longest' or its index; for long-context runs such as --ctx 16384 --chunks 1")
    ap.add_argument("-c", "--ctx", type=int, default=1024, metavar="N", help="tokens per chunk; default 1024")
    ap.add_argument("--chunks", type=int, default=4, metavar="N", help="number of chunks; default 4")
    ap.add_argument("--kv", default=DEFAULT_KV, metavar="LIST",
                    help="comma-separated caches: f16, dqN, paperN, kAvB, llama:TYPE, NAME+opt=val; "
                         f"default {DEFAULT_KV}")
    ap.add_argument("--ref", default="f16", metavar="CACHE", help="reference cache for KLD and top-1; default f16")
    ap.add_argument("-t", "--threads", type=int, default=None, metavar="N", help="CPU threads; default all")
    ap.add_argument("--json", default=None, metavar="FILE",
                    help="write every number, the config, the model's and text's sha256 and the versions")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _cmd(args: argparse.Namespace) -> int:
    rep = run(args.model, args.text, args.ctx, args.chunks, args.kv, args.ref, args.threads, args.doc,
              progress=not args.no_progress)
    _report.print_and_save(rep, markdown(rep), args.json)
    return 0


def add_parser(sub: Any) -> None:
    """`decoquant eval` (see decoquant.cli)."""
    p = sub.add_parser("eval", help="PPL and KL divergence of KV caches, ours and llama.cpp's, on the same tokens",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(fn=_cmd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="decoquant eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return _cmd(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
