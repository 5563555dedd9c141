"""Regenerate the end-to-end results: docs/results/{eval,long,bench,maxctx}_<model>.json, the tables of
docs/RESULTS.md between `<!-- run_all:begin NAME -->` / `<!-- run_all:end NAME -->` markers (the rest of
the file is left as written; missing blocks are appended at the end), and the plots
docs/results/{kld_vs_bits,decode_vs_context,kv_memory_vs_context}.png.

    python bench/run_all.py                      # everything, all four models (~6 h on the 2-vCPU VM)
    python bench/run_all.py --only eval --models qwen2.5-coder-1.5b-instruct
    python bench/run_all.py --render-only        # tables and plots from the JSON already there
    python bench/run_all.py --quick              # smoke run: SmolLM2, tiny sizes, into /tmp/decoquant-quick

Steps per model: `eval` (ctx 1024 x 4 chunks of sotu.txt, every cache of EVAL_KV against our f16),
`long` (the longest address of sotu.txt, 40K tokens, at 8K context, one chunk), `bench` (prefill and
decode speed at several contexts, interleaved repeats in subprocesses) and `maxctx` (the longest context
whose KV cache fits in 2 GiB). Each step is the Python API of the `decoquant eval` / `decoquant bench`
command recorded in its JSON under "command".
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared/data/sotu.txt"
MODELS = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "gemma-3-270m"]
EVAL_KV = ("f16,dq2,dq3,dq4,dq8,paper2,paper4,paper8,k4v2,k8v4,"
           "llama:q8_0,llama:q5_0,llama:q4_1,llama:q4_0")
LONG_KV = "f16,dq4,dq2,llama:q8_0,llama:q4_0"
BENCH_KV = "f16,f16+attn=dq,dq4,llama:f16,llama:q8_0,llama:q4_0"
MAX_KV = "f16,dq8,dq4,dq2,llama:f16,llama:q8_0,llama:q4_0"
# ggml's CPU flash attention makes long prefills slow on 2 vCPUs (a 16K prefill of Qwen2.5-1.5B: ~40 min per
# cache), hence 8K for the long documents and 512/4K for speed by default (--long-ctx, --bench-contexts)
FULL = {"eval": {"ctx": 1024, "chunks": 4, "kv": EVAL_KV}, "long": {"ctx": 8192, "chunks": 1, "kv": LONG_KV},
        "bench": {"contexts": "512,4096", "decode": 32, "repeats": 3, "kv": BENCH_KV},
        "maxctx": {"memory": "2GiB", "kv": MAX_KV}}
QUICK = {"eval": {"ctx": 256, "chunks": 1, "kv": "f16,dq2,dq4,dq8,paper4,llama:q8_0,llama:q4_0"},
         "long": {"ctx": 1024, "chunks": 1, "kv": "f16,dq4,llama:q4_0"},
         "bench": {"contexts": "256,512", "decode": 4, "repeats": 1, "kv": "f16,dq4,llama:f16"},
         "maxctx": {"memory": "64MiB", "kv": "f16,dq4,llama:f16,llama:q4_0"}}
STEPS = ("eval", "long", "bench", "maxctx")


# ------------------------------------------------------------------------------- running


def _save(out: Path, name: str, rep: dict[str, Any], command: str) -> None:
    rep["command"] = command
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(rep, indent=1) + "\n")
    print(f"wrote {out / name}", file=sys.stderr)


def run_model(model: str, steps: list[str], cfg: dict[str, dict[str, Any]], out: Path, threads: int,
              text: Path) -> None:
    from decoquant import bench, runners
    from decoquant import eval as dq_eval
    from decoquant._llamacpp import LlamaModel

    n_train = LlamaModel(runners.resolve_model(model), vocab_only=True).n_ctx_train
    if "eval" in steps:
        c = cfg["eval"]
        rep = dq_eval.run(model, text, c["ctx"], c["chunks"], c["kv"], "f16", threads)
        _save(out, f"eval_{model}.json", rep, f"decoquant eval --model {model} --text {text} --ctx {c['ctx']} "
              f"--chunks {c['chunks']} --kv {c['kv']} --ref f16 --threads {threads}")
    if "long" in steps:
        c = cfg["long"]
        ctx = min(c["ctx"], n_train) if n_train else c["ctx"]
        rep = dq_eval.run(model, text, ctx, c["chunks"], c["kv"], "f16", threads, doc="longest")
        _save(out, f"long_{model}.json", rep, f"decoquant eval --model {model} --text {text} --doc longest "
              f"--ctx {ctx} --chunks {c['chunks']} --kv {c['kv']} --ref f16 --threads {threads}")
    if "bench" in steps:
        c = cfg["bench"]
        rep = bench.run(model, c["kv"], c["contexts"], c["decode"], c["repeats"], threads, text)
        _save(out, f"bench_{model}.json", rep, f"decoquant bench --model {model} --text {text} --kv {c['kv']} "
              f"--contexts {c['contexts']} --decode {c['decode']} --repeats {c['repeats']} --threads {threads}")
    if "maxctx" in steps:
        c = cfg["maxctx"]
        rep = bench.max_context(model, c["kv"], c["memory"], threads)
        _save(out, f"maxctx_{model}.json", rep, f"decoquant bench --max-context --memory {c['memory']} "
              f"--model {model} --kv {c['kv']}")


# ------------------------------------------------------------------------------- tables


def _load(out: Path, step: str) -> dict[str, dict[str, Any]]:
    reps = {}
    for m in MODELS + sorted({p.stem.split("_", 1)[1] for p in out.glob(f"{step}_*.json")} - set(MODELS)):
        p = out / f"{step}_{m}.json"
        if p.exists():
            reps[m] = json.loads(p.read_text())
    return reps


def _method(kv: str) -> tuple[str, int]:
    """(method label, sort key) of a cache name, for tables and the KLD plot."""
    if kv.startswith("llama:"):
        return "llama.cpp (Hadamard as shipped)", 2
    if kv.startswith("paper"):
        return "DecoQuant, paper preset", 1
    if kv == "f16":
        return "f16", -1
    if re.match(r"^dq\d+$", kv):
        return "DecoQuant, default", 0
    return "DecoQuant, other", 3


def eval_tables(reps: dict[str, dict[str, Any]]) -> str:
    out = []
    for m, rep in reps.items():
        cfg = rep["config"]
        res = sorted(rep["results"], key=lambda r: (_method(r["kv"])[1], -r["bits_per_value"]))
        out += [(f"**{m}** (ctx {cfg['ctx']} × {cfg['chunks']} chunks, {res[0]['n_scored']} scored tokens, "
                f"KLD against {cfg['ref']}; `{rep.get('command', '')}`)"), "",
                "| cache | bits/value | KV bytes/token (long run) | PPL | KLD mean | KLD p99 | top-1 |",
                "|---|---|---|---|---|---|---|"]
        for r in res:
            out.append(f"| {r['kv']} | {r['bits_per_value']:.3f} | {r['kv_bytes_per_token_long']:.0f} | "
                       f"{r['ppl']:.3f} | {r['kld_mean']:.5f} | {r['kld_p99']:.4f} | {100 * r['top1']:.1f}% |")
        out.append("")
    return "\n".join(out).strip()


def _get(rep: dict[str, Any] | None, kv: str) -> dict[str, Any] | None:
    return next((r for r in rep["results"] if r["kv"] == kv), None) if rep else None


def goals_table(evals: dict[str, dict[str, Any]], benches: dict[str, dict[str, Any]]) -> str:
    """The issue's goals, met or not, from the numbers."""
    out = [("| model | DQ-4 bits/value | DQ-4 KLD | q4_0 KLD | DQ-4 ≤ 0.5× q4_0 | q8_0 KLD | DQ-4 ≤ q8_0 | "
           "DQ-2 bits/value | DQ-2 KLD | DQ-2 ≤ q4_0 | DQ-4 decode / llama f16 @4K |"),
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, rep in evals.items():
        d4, d2, q4, q8 = (_get(rep, k) for k in ("dq4", "dq2", "llama:q4_0", "llama:q8_0"))
        if not (d4 and q4):
            continue

        def yn(ok: bool) -> str:
            return "yes" if ok else "**no**"

        b = next((r for r in (benches.get(m) or {}).get("results", []) if r["kv"] == "dq4" and r["ctx"] == 4096),
                 None)
        dec = f"{b['decode_vs_llama_f16']:.2f}×" if b and "decode_vs_llama_f16" in b else "not measured"
        row = [m, f"{d4['bits_per_value']:.3f}", f"{d4['kld_mean']:.4f}", f"{q4['kld_mean']:.4f}",
               yn(d4["kld_mean"] <= 0.5 * q4["kld_mean"]),
               f"{q8['kld_mean']:.4f}" if q8 else "-", yn(d4["kld_mean"] <= q8["kld_mean"]) if q8 else "-",
               f"{d2['bits_per_value']:.3f}" if d2 else "-", f"{d2['kld_mean']:.4f}" if d2 else "-",
               yn(d2["kld_mean"] <= q4["kld_mean"]) if d2 else "-", dec]
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out) if len(out) > 2 else "No eval results yet."


def long_tables(reps: dict[str, dict[str, Any]]) -> str:
    out = ["| model | doc (tokens used) | ctx | cache | bits/value | PPL | KLD mean | KLD p99 | top-1 |",
           "|---|---|---|---|---|---|---|---|---|"]
    for m, rep in reps.items():
        t = rep["text"]
        for r in rep["results"]:
            out.append(f"| {m} | {t.get('doc')} ({t['tokens_used']}) | {rep['config']['ctx']} | {r['kv']} | "
                       f"{r['bits_per_value']:.3f} | {r['ppl']:.3f} | {r['kld_mean']:.5f} | {r['kld_p99']:.4f} | "
                       f"{100 * r['top1']:.1f}% |")
    return "\n".join(out)


def bench_tables(reps: dict[str, dict[str, Any]]) -> str:
    from decoquant import bench

    return "\n\n".join(bench.markdown(r) + f"\n\n`{r.get('command', '')}`" for r in reps.values())


def maxctx_tables(reps: dict[str, dict[str, Any]]) -> str:
    from decoquant import bench

    return "\n\n".join(bench.markdown(r) for r in reps.values())


def machine_block(all_reps: list[dict[str, Any]], benches: dict[str, dict[str, Any]]) -> str:
    if not all_reps:
        return "No results yet."
    mach = all_reps[0]["machine"]
    loads = [r["machine"].get("loadavg_start", r["machine"].get("loadavg")) for r in all_reps]
    loads = [x[0] for x in loads if x]
    spreads = [(r[k]["max"] - r[k]["min"]) / r[k]["median"] for b in benches.values() for r in b["results"]
               for k in ("prefill_tok_s", "decode_tok_s") if r[k]["median"] > 0]
    v = all_reps[0]["versions"]
    s = (f"Machine: {mach['cpu']}, {mach['cpus']} CPUs, {(mach['mem_bytes'] or 0) / 2**30:.0f} GiB; "
         f"decoquant {v['decoquant']}, ggml {v['ggml']} ({v['ggml_commit']}), llama-cpp-python "
         f"{v.get('llama_cpp_python')}, kernels {v.get('kernels')}. 1-minute load average when each run started: "
         f"{min(loads):.2f}–{max(loads):.2f}." if loads else "")
    if spreads:
        s += (" Speed noise: the (max − min) / median spread of the repeats is "
              f"{100 * statistics.median(spreads):.0f}% at the median and {100 * max(spreads):.0f}% at worst.")
    return s


def replace_block(doc: str, name: str, body: str) -> str:
    begin, end = f"<!-- run_all:begin {name} -->", f"<!-- run_all:end {name} -->"
    block = f"{begin}\n{body}\n{end}"
    if begin in doc and end in doc:
        i, j = doc.index(begin), doc.index(end) + len(end)
        return doc[:i] + block + doc[j:]
    return doc.rstrip() + "\n\n" + block + "\n"


# ------------------------------------------------------------------------------- plots


def plots(out: Path, evals: dict[str, Any], benches: dict[str, Any], maxctx: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from decoquant import kvspec

    made = []

    def save(fig: Any, axes: Any, name: str) -> None:
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        made.append(out / name)
        fig.savefig(made[-1], dpi=110)
        plt.close(fig)

    if evals:
        fig, axes = plt.subplots(1, len(evals), figsize=(4.6 * len(evals), 4), squeeze=False)
        for ax, (m, rep) in zip(axes[0], evals.items(), strict=True):
            by: dict[str, list[tuple[float, float, str]]] = {}
            for r in rep["results"]:
                if r["kv"] != "f16":
                    by.setdefault(_method(r["kv"])[0], []).append((r["bits_per_value"], r["kld_mean"], r["kv"]))
            for label, pts in sorted(by.items()):
                pts.sort()
                style = "o" if label == "DecoQuant, other" else "o-"
                ax.plot([p[0] for p in pts], [max(p[1], 1e-6) for p in pts], style, label=label)
                for x, y, kv in pts:
                    ax.annotate(kv.replace("llama:", ""), (x, max(y, 1e-6)), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")
            ax.set_yscale("log")
            ax.set_xlabel("bits per K/V value")
            ax.set_ylabel("mean KLD vs f16 (log)")
            ax.set_title(f"{m}\nctx {rep['config']['ctx']} × {rep['config']['chunks']}", fontsize=9)
            ax.grid(alpha=0.3, which="both")
        save(fig, axes, "kld_vs_bits.png")
    if benches:
        fig, axes = plt.subplots(1, len(benches), figsize=(4.6 * len(benches), 4), squeeze=False)
        for ax, (m, rep) in zip(axes[0], benches.items(), strict=True):
            for kv in rep["config"]["kv"]:
                rs = sorted((r for r in rep["results"] if r["kv"] == kv), key=lambda r: r["ctx"])
                x = [r["ctx"] for r in rs]
                med = [r["decode_tok_s"]["median"] for r in rs]
                err = [[med[i] - r["decode_tok_s"]["min"] for i, r in enumerate(rs)],
                       [r["decode_tok_s"]["max"] - med[i] for i, r in enumerate(rs)]]
                ax.errorbar(x, med, yerr=err, marker="o", capsize=3, label=kv)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("context (tokens in the cache)")
            ax.set_ylabel("decode tokens/s (median, min–max)")
            ax.set_title(f"{m}, {rep['config']['threads']} threads", fontsize=9)
            ax.grid(alpha=0.3)
        save(fig, axes, "decode_vs_context.png")
    shapes = {m: r["model"] for m, r in {**evals, **benches, **maxctx}.items()}
    if shapes:
        kvs = ["f16", "dq8", "dq4", "dq2", "llama:q8_0", "llama:q4_0"]
        fig, axes = plt.subplots(1, len(shapes), figsize=(4.6 * len(shapes), 4), squeeze=False)
        ctxs = [2**k for k in range(9, 18)]
        for ax, (m, info) in zip(axes[0], shapes.items(), strict=True):
            shape = (info["n_layer"], info["n_head_kv"], info["head_dim"])
            for kv in kvs:
                spec = kvspec.parse(kv)
                path = info.get("path") if info.get("path") and Path(info["path"]).exists() else None
                line, = ax.plot(ctxs, [spec.kv_bytes(c, *shape, model_path=path) / 2**20 for c in ctxs], label=kv)
                pts = [(r["ctx"], r["kv_bytes"]) for r in (benches.get(m) or {}).get("results", []) if r["kv"] == kv]
                pts += [(r["n_ctx_allocated"], r["kv_bytes_allocated"]) for r in (maxctx.get(m) or {}).get(
                    "results", []) if r["kv"] == kv and r.get("kv_bytes_allocated")]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] / 2**20 for p in pts], "x", color=line.get_color())
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("context (tokens)")
            ax.set_ylabel("KV cache MiB (lines: format; x: allocated)")
            ax.set_title(m, fontsize=9)
            ax.grid(alpha=0.3, which="both")
        save(fig, axes, "kv_memory_vs_context.png")
    return made


def render(out: Path, results_md: Path) -> None:
    evals, longs, benches, maxctx = (_load(out, s) for s in STEPS)
    doc = results_md.read_text() if results_md.exists() else "# Results\n"
    rel = out.resolve()
    try:
        rel = out.resolve().relative_to(results_md.resolve().parent)
    except ValueError:
        pass
    figs = plots(out, evals, benches, maxctx)
    doc = replace_block(doc, "machine", machine_block([*evals.values(), *longs.values(), *benches.values()],
                                                      benches))
    doc = replace_block(doc, "goals", goals_table(evals, benches))
    doc = replace_block(doc, "eval", eval_tables(evals) or "No eval results yet.")
    doc = replace_block(doc, "plots", "\n".join(f"![{p.stem}]({rel}/{p.name})" for p in figs) or "No plots yet.")
    doc = replace_block(doc, "long", long_tables(longs) if longs else "No long-context results yet.")
    doc = replace_block(doc, "bench", bench_tables(benches) or "No speed results yet.")
    doc = replace_block(doc, "maxctx", maxctx_tables(maxctx) or "No max-context results yet.")
    results_md.write_text(doc)
    print(f"wrote {results_md} and {len(figs)} plots in {out}", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--only", default=",".join(STEPS), help=f"steps to run, of {','.join(STEPS)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text", type=Path, default=TEXT)
    ap.add_argument("--long-ctx", type=int, default=None, help=f"context of the long-document eval "
                    f"(default {FULL['long']['ctx']}; capped at each model's training context)")
    ap.add_argument("--bench-contexts", default=None, help=f"speed contexts (default {FULL['bench']['contexts']})")
    ap.add_argument("--bench-repeats", type=int, default=None,
                    help=f"speed repeats (default {FULL['bench']['repeats']})")
    ap.add_argument("--bench-kv", default=None, help=f"caches timed (default {FULL['bench']['kv']})")
    ap.add_argument("--eval-kv", default=None, help=f"caches scored (default {FULL['eval']['kv']})")
    ap.add_argument("--quick", action="store_true", help="smoke run: SmolLM2, tiny sizes, into --out")
    ap.add_argument("--out", type=Path, default=None, help="JSON and PNG folder (default docs/results; "
                    "--quick: /tmp/decoquant-quick)")
    ap.add_argument("--results-md", type=Path, default=None,
                    help="Markdown to update (default docs/RESULTS.md; --quick: a copy in --out)")
    ap.add_argument("--render-only", action="store_true", help="only tables and plots from the JSON in --out")
    args = ap.parse_args()
    out = args.out or (Path("/tmp/decoquant-quick") if args.quick else ROOT / "docs/results")
    md = args.results_md
    if md is None:
        md = out / "RESULTS.md" if args.quick else ROOT / "docs/RESULTS.md"
        if args.quick and not md.exists():
            out.mkdir(parents=True, exist_ok=True)
            md.write_text((ROOT / "docs/RESULTS.md").read_text())
    models = ["smollm2-135m-instruct"] if args.quick and args.models == ",".join(MODELS) else args.models.split(",")
    steps = [s for s in args.only.split(",") if s]
    bad = sorted(set(steps) - set(STEPS))
    if bad:
        ap.error(f"unknown step(s) {bad}; valid: {', '.join(STEPS)}")
    cfg = json.loads(json.dumps(QUICK if args.quick else FULL))
    if args.long_ctx:
        cfg["long"]["ctx"] = args.long_ctx
    if args.bench_contexts:
        cfg["bench"]["contexts"] = args.bench_contexts
    if args.bench_repeats:
        cfg["bench"]["repeats"] = args.bench_repeats
    if args.bench_kv:
        cfg["bench"]["kv"] = args.bench_kv
    if args.eval_kv:
        cfg["eval"]["kv"] = args.eval_kv
    if not args.render_only:
        t0 = time.time()
        for m in models:
            run_model(m, steps, cfg, out, args.threads, args.text)
        print(f"ran {steps} on {models} in {(time.time() - t0) / 60:.1f} min", file=sys.stderr)
    render(out, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
