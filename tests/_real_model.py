"""Where the tests find a real GGUF of the registry (CI fetches SmolLM2 in its first command)."""

from __future__ import annotations

import os
from pathlib import Path


def find_model(name: str) -> Path | None:
    """The cached GGUF of a registry model, or None; never downloads."""
    try:
        from decoquant import registry
    except ImportError:  # registry.py not there: its cache layout
        cache = Path(os.environ.get("DECOQUANT_CACHE") or Path.home() / ".cache" / "decoquant")
        p = cache / "models" / f"{name}.gguf"
        return p if p.is_file() else None
    try:
        p = Path(registry.resolve_model(name, fetch=False))
    except (OSError, LookupError, ValueError, RuntimeError):  # not cached: resolve_model(fetch=False) refuses
        return None
    return p if p.is_file() else None
