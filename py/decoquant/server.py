"""An OpenAI-compatible server: llama-cpp-python's server (``llama_cpp.server``) on decoquant.Llama.

    python -m decoquant.server --model smollm2-135m-instruct --kv-cache decoquant --port 8000
    curl localhost:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hi"}]}'

--model takes a .gguf path or a registry name (fetched on first use; default: the default model).
--kv-cache / --kv-bits-k / --kv-bits-v / --kv-preset choose the cache; every other flag is
llama_cpp.server's own (--n_ctx, --n_threads, --host, --port, --chat_format, ...; see --help).
Needs llama_cpp.server's packages: pip install "llama-cpp-python[server]==0.3.36".
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

_SERVER_DEPS = 'pip install "llama-cpp-python[server]==0.3.36"  (or the decoquant[server] extra)'


def _parser() -> argparse.ArgumentParser:
    from .cli import add_kv_args
    from .reference import PRESETS

    ap = argparse.ArgumentParser(prog="python -m decoquant.server", add_help=False, allow_abbrev=False,
                                 description="llama_cpp.server on decoquant.Llama. Other flags go to llama_cpp.server.")
    ap.add_argument("--model", default=None, metavar="NAME|PATH", help="a .gguf file or a registry name")
    add_kv_args(ap)
    ap.add_argument("--kv-preset", choices=sorted(PRESETS), default="default", help="DecoQuant preset")
    return ap


def served_class(**kv: Any) -> type:
    """decoquant.Llama with the KV kwargs bound: what llama_cpp.server instantiates."""
    from .llama import Llama

    class ServedLlama(Llama):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, **kv})

    ServedLlama.__name__ = ServedLlama.__qualname__ = "Llama"
    return ServedLlama


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = _parser()
    ours, rest = ap.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        ap.print_help()
        print("\nllama_cpp.server's flags follow.\n")
    try:
        from .llama import llama_cpp  # first: it points llama_cpp at our libllama

        server_main = importlib.import_module("llama_cpp.server.__main__")
    except ModuleNotFoundError as e:
        print(f"decoquant.server: error: llama_cpp.server needs {e.name}: {_SERVER_DEPS}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"decoquant.server: error: {e}", file=sys.stderr)
        return 2

    help_only = "-h" in rest or "--help" in rest
    if not help_only and (ours.model is not None or not ("--config_file" in rest or os.environ.get("CONFIG_FILE"))):
        from .registry import RegistryError, resolve_model

        try:
            rest = ["--model", str(resolve_model(ours.model)), *rest]
        except (ValueError, RegistryError) as e:
            print(f"decoquant.server: error: {e}", file=sys.stderr)
            return 2
    # llama_cpp.server looks llama_cpp.Llama up when it loads a model (server/model.py)
    llama_cpp.Llama = served_class(kv_cache=ours.kv_cache, kv_bits_k=ours.kv_bits_k, kv_bits_v=ours.kv_bits_v,
                                   kv_preset=ours.kv_preset)
    sys.argv = [ap.prog, *rest]
    server_main.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
