"""KV cache names for `decoquant eval` / `decoquant bench`, and their exact sizes.

    f16            our runtime, f16 cache (attn=None: ggml's flash attention, llama.cpp's own arithmetic)
    dqN            DecoQuant, N bits for K and V, default preset (N in 2, 3, 4, 8)
    paperN         DecoQuant, the paper's preset
    kAvB           DecoQuant, A bits for K and B bits for V, default preset
    llama:TYPE     llama.cpp's cache through llama-cpp-python (TYPE: f16, q8_0, q4_0, q4_1, q5_0, ...),
                   flash attention on, with its Hadamard rotation as shipped
    NAME+key=val   options: for ours any decoquant option (chunk, sinks, scale, asym, scope, gauge) or
                   attn=dq|ggml; for llama:TYPE, rot=0 turns llama.cpp's rotation off
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from . import reference

# bits per stored value of llama.cpp's KV types (ggml block size / block length)
GGML_BITS = {"f32": 32.0, "f16": 16.0, "bf16": 16.0, "q8_0": 8.5, "q5_1": 6.0, "q5_0": 5.5, "q4_1": 5.0,
             "q4_0": 4.5, "iq4_nl": 4.5}

_OURS = re.compile(r"^(?:(?P<f16>f16)|dq(?P<dq>\d+)|paper(?P<paper>\d+)|k(?P<k>\d+)v(?P<v>\d+))$")


def _value(s: str) -> object:
    low = s.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    return s


@dataclass(frozen=True)
class KVSpec:
    """One cache configuration, parsed from its name."""

    name: str
    backend: str  # "decoquant" (our Engine) or "llama" (llama.cpp through llama-cpp-python)
    kv_cache: str = "f16"  # ours: "f16" or "decoquant"
    bits_k: int = 16
    bits_v: int = 16
    preset: str = "default"
    options: dict[str, object] = field(default_factory=dict)
    attn: str | None = None
    ggml_type: str = ""  # llama
    rotation: bool = True  # llama: the Hadamard rotation of quantized K/V (LLAMA_ATTN_ROT_DISABLE)

    @property
    def is_llama(self) -> bool:
        return self.backend == "llama"

    def engine_kwargs(self) -> dict[str, object]:
        """Keyword arguments of decoquant.Engine for this cache (ours only)."""
        if self.is_llama:
            raise ValueError(f"{self.name} runs on llama.cpp, not on decoquant.Engine")
        kw: dict[str, object] = {"kv_cache": self.kv_cache, "attn": self.attn}
        if self.kv_cache == "decoquant":
            kw.update(kv_bits_k=self.bits_k, kv_bits_v=self.bits_v, preset=self.preset, **self.options)
        return kw

    def _opts(self, bits: int) -> reference.Options:
        return reference.options(bits, self.preset, **self.options)

    def bits_per_value(self, n_kv_heads: int, head_dim: int) -> float:
        """Stored bits per K/V value of a compressed (full) chunk, K and V averaged; 16 for f16."""
        if self.is_llama:
            return GGML_BITS[self.ggml_type]
        if self.kv_cache == "f16":
            return 16.0
        from ._lib import lib
        from .core import make_config

        bits = [lib.dq_bits_per_value(make_config(self._opts(b), n_kv_heads, head_dim), self._opts(b).chunk)
                for b in (self.bits_k, self.bits_v)]
        return float(sum(bits) / 2)

    def kv_bytes(self, n_ctx: int, n_layer: int, n_kv_heads: int, head_dim: int,
                 model_path: str | os.PathLike | None = None, n_batch: int = 512) -> int:
        """Exact bytes the cache allocates for n_ctx tokens. Ours: asked of the runtime when model_path is
        given (sliding-window rings included), else from the format (every layer full-size). llama.cpp's:
        its f16/quantized rows for the padded n_ctx (full-size sliding-window layers, its default)."""
        d = n_kv_heads * head_dim
        if self.is_llama:
            padded = -(-n_ctx // 256) * 256  # llama.cpp pads n_ctx to a multiple of 256
            return round(n_layer * 2 * padded * d * GGML_BITS[self.ggml_type] / 8)
        if model_path is not None:
            from .engine import kv_bytes

            kw = {k: v for k, v in self.engine_kwargs().items() if k != "attn"}
            return kv_bytes(model_path, n_ctx, n_batch=n_batch, n_ubatch=n_batch, **kw)
        if self.kv_cache == "f16":
            return n_layer * 2 * n_ctx * d * 2
        from ._lib import lib
        from .core import make_config

        opts = self._opts(self.bits_k)
        sinks = min(opts.sinks, n_ctx)
        n_blocks = (n_ctx - sinks) // opts.chunk
        per_layer = 0
        for b in (self.bits_k, self.bits_v):
            block = int(lib.dq_block_size(make_config(self._opts(b), n_kv_heads, head_dim), opts.chunk))
            per_layer += sinks * d * 2 + n_blocks * block + opts.chunk * d * 2  # sinks, blocks, fp16 residual
        return n_layer * per_layer

    def kv_bytes_per_token(self, n_layer: int, n_kv_heads: int, head_dim: int) -> float:
        """Bytes per token in the long run (compressed chunks only; no fp16 residual or padding)."""
        return n_layer * 2 * n_kv_heads * head_dim * self.bits_per_value(n_kv_heads, head_dim) / 8


def parse(name: str) -> KVSpec:
    """A KVSpec from a cache name; ValueError naming the problem otherwise."""
    raw = name.strip()
    base, *opt_parts = raw.split("+")
    opts: dict[str, object] = {}
    for part in opt_parts:
        key, eq, val = part.partition("=")
        if not eq or not key:
            raise ValueError(f"KV cache {raw!r}: option {part!r} must be key=value")
        opts[key.strip()] = _value(val.strip())
    if base.startswith("llama:"):
        t = base[len("llama:"):]
        if t not in GGML_BITS:
            raise ValueError(f"KV cache {raw!r}: unknown llama.cpp type {t!r}; valid: {sorted(GGML_BITS)}")
        rot = opts.pop("rot", True)
        if opts:
            raise ValueError(f"KV cache {raw!r}: llama.cpp caches take only the option rot=0|1, got {sorted(opts)}")
        return KVSpec(raw, "llama", ggml_type=t, rotation=bool(rot))
    m = _OURS.match(base)
    if not m:
        raise ValueError(f"unknown KV cache {raw!r}: expected f16, dqN, paperN, kAvB (N, A, B in "
                         f"{', '.join(map(str, reference.BITS))}) or llama:TYPE (TYPE in {', '.join(GGML_BITS)}), "
                         "optionally followed by +key=value options")
    attn = opts.pop("attn", None)
    if attn is not None and attn not in ("dq", "ggml"):
        raise ValueError(f"KV cache {raw!r}: attn must be dq or ggml, got {attn!r}")
    if m["f16"]:
        if opts:
            raise ValueError(f"KV cache {raw!r}: the f16 cache takes only the option attn=dq|ggml, got {sorted(opts)}")
        return KVSpec(raw, "decoquant", "f16", attn=attn if isinstance(attn, str) else None)
    if m["dq"] or m["paper"]:
        bk = bv = int(m["dq"] or m["paper"])
    else:
        bk, bv = int(m["k"]), int(m["v"])
    preset = "paper" if m["paper"] else "default"
    for b in (bk, bv):
        if b not in reference.BITS:
            raise ValueError(f"KV cache {raw!r}: bits must be one of {reference.BITS}, got {b}")
    try:
        reference.options(bk, preset, **opts).check(1, 16)
    except (TypeError, ValueError) as e:
        raise ValueError(f"KV cache {raw!r}: {e}") from None
    return KVSpec(raw, "decoquant", "decoquant", bk, bv, preset, opts, attn if isinstance(attn, str) else None)


def parse_list(names: str | Iterable[str]) -> list[KVSpec]:
    """Comma-separated names (or a list of names) to specs; duplicates and empty lists are errors."""
    items = [n for n in (names.split(",") if isinstance(names, str) else names)]
    items = [n.strip() for n in items if n.strip()]
    if not items:
        raise ValueError("no KV caches given (e.g. --kv f16,dq4,llama:q8_0)")
    specs = [parse(n) for n in items]
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise ValueError(f"KV cache {s.name!r} is listed twice")
        seen.add(s.name)
    return specs
