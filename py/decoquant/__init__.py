"""DecoQuant: KV-cache compression by matrix decomposition, for local GGUF models."""

from .core import Compressed, attention, compress, kernels
from .engine import Engine, EngineError

__all__ = ["Compressed", "Engine", "EngineError", "attention", "compress", "kernels"]
__version__ = "0.1.0"
