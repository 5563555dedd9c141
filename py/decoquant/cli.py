"""The `decoquant` command: chat, generate, info, models, eval, bench, demo.

Each subcommand lives in a module of this package with ``add_parser(sub)``, which adds its parser(s)
to the argparse sub-parsers and sets ``fn`` (``fn(args) -> int``, the exit code) as a default. To add a
subcommand, write such a module and list it in SUBCOMMANDS. Modules import heavy things (llama_cpp,
the runtime) inside fn, so that ``decoquant --help`` stays fast. User errors (ValueError, a fetch or
runtime error, a missing file) print ``decoquant: error: ...`` and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

# modules of the decoquant package that define add_parser(sub), in --help order
SUBCOMMANDS = ["chat", "models_cli", "eval", "bench", "demo"]


# ------------------------------------------------------------------ flags shared by subcommands

def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model, -c/--ctx, -t/--threads: a model and a context."""
    from .registry import DEFAULT_MODEL

    p.add_argument("-m", "--model", default=None, metavar="NAME|PATH",
                   help=f"a .gguf file or a registry name (`decoquant models list`); default {DEFAULT_MODEL}, "
                        "fetched on first use")
    p.add_argument("-c", "--ctx", type=int, default=4096, metavar="N",
                   help="context size in tokens (0: the model's training context); default 4096")
    p.add_argument("-t", "--threads", type=int, default=None, metavar="N", help="CPU threads")


def add_kv_args(p: argparse.ArgumentParser) -> None:
    """--kv-cache, --kv-bits-k, --kv-bits-v."""
    p.add_argument("--kv-cache", choices=("decoquant", "f16"), default="decoquant",
                   help="KV cache: DecoQuant (compressed, default) or f16")
    p.add_argument("--kv-bits-k", type=int, choices=(2, 3, 4, 8), default=4, metavar="{2,3,4,8}",
                   help="bits per K value (DecoQuant cache); default 4")
    p.add_argument("--kv-bits-v", type=int, choices=(2, 3, 4, 8), default=4, metavar="{2,3,4,8}",
                   help="bits per V value (DecoQuant cache); default 4")


def model_path(args: argparse.Namespace) -> str:
    """The --model's .gguf path (a registry model is fetched into the cache on first use)."""
    from .registry import resolve_model

    return str(resolve_model(args.model))


def open_llama(args: argparse.Namespace, **kwargs: Any) -> Any:
    """decoquant.Llama from the model and KV flags (add_model_args + add_kv_args)."""
    path = model_path(args)
    if args.ctx < 0:
        raise ValueError(f"--ctx must be >= 0, got {args.ctx}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    from .llama import Llama

    if args.threads is not None:
        kwargs.update(n_threads=args.threads, n_threads_batch=args.threads)
    if getattr(args, "seed", None) is not None:
        kwargs["seed"] = args.seed
    return Llama(model_path=path, n_ctx=args.ctx, kv_cache=args.kv_cache, kv_bits_k=args.kv_bits_k,
                 kv_bits_v=args.kv_bits_v, verbose=bool(getattr(args, "verbose", False)), **kwargs)


def fail(msg: str) -> int:
    print(f"decoquant: error: {msg}", file=sys.stderr)
    return 2


def _user_errors() -> tuple[type[BaseException], ...]:
    from .engine import EngineError
    from .registry import RegistryError

    return (ValueError, RegistryError, EngineError, OSError, ImportError)


# --------------------------------------------------------------------------------------- main

def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="decoquant", description="DecoQuant: local GGUF models with a compressed "
                                 "KV cache (`decoquant chat` to start)")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f".{name}", __package__).add_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `decoquant models list | head -1`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except _user_errors() as e:
        if os.environ.get("DECOQUANT_DEBUG"):
            raise
        return fail(str(e) or type(e).__name__)


if __name__ == "__main__":
    sys.exit(main())
