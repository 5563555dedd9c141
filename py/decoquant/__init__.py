"""DecoQuant: KV-cache compression by matrix decomposition, for local GGUF models."""

from .core import Compressed, attention, compress, kernels
from .engine import Engine, EngineError

__all__ = ["Compressed", "Engine", "EngineError", "Llama", "attention", "compress", "kernels"]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # decoquant.Llama imports llama_cpp (and libllama): only when asked for
    if name == "Llama":
        from .llama import Llama

        return Llama
    raise AttributeError(f"module 'decoquant' has no attribute {name!r}")
