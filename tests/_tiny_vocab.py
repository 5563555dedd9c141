"""The tiny random llama of _tiny_models with a byte-level BPE vocabulary (128 tokens), so that llama.cpp
can load it and tokenize text too (eval and bench need a tokenizer; the runtime tests do not)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import _tiny_models as tm


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character map (byte-level BPE)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def write_llama_with_vocab(path: Path, seed: int = 0) -> Path:
    """ASCII bytes 0..126 are tokens 0..126; token 127 is ' t' (one merge, so the BPE has a merge list)."""
    assert tm.SHAPES["llama"]["vocab"] == 128
    bc = _byte_chars()

    def add_vocab(wr: Any) -> None:
        wr.add_tokenizer_model("gpt2")
        wr.add_tokenizer_pre("default")
        wr.add_token_list([bc[b] for b in range(127)] + [bc[32] + "t"])
        wr.add_token_types([1] * 128)
        wr.add_token_merges([bc[32] + " t"])
        wr.add_bos_token_id(0)
        wr.add_add_bos_token(False)

    tm.write_gguf(path, "llama", seed, extra_kv=add_vocab)
    return path
