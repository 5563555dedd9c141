"""The tiny random llama of _tiny_models with a byte-level BPE vocabulary (128 tokens), so that llama.cpp
can load it and tokenize text too (eval and bench need a tokenizer; the runtime tests do not)."""

from __future__ import annotations

from pathlib import Path

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
    import gguf

    s, name = tm.SHAPES["llama"], "llama"
    wr = gguf.GGUFWriter(str(path), name)
    wr.add_uint32(f"{name}.block_count", s["n_layer"])
    wr.add_uint32(f"{name}.context_length", 2048)
    wr.add_uint32(f"{name}.embedding_length", s["n_embd"])
    wr.add_uint32(f"{name}.feed_forward_length", s["n_ff"])
    wr.add_uint32(f"{name}.attention.head_count", s["n_head"])
    wr.add_uint32(f"{name}.attention.head_count_kv", s["n_head_kv"])
    wr.add_float32(f"{name}.rope.freq_base", tm.ROPE_BASE["llama"])
    wr.add_float32(f"{name}.attention.layer_norm_rms_epsilon", tm.EPS)
    bc = _byte_chars()
    assert s["vocab"] == 128
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("default")
    wr.add_token_list([bc[b] for b in range(127)] + [bc[32] + "t"])
    wr.add_token_types([1] * 128)
    wr.add_token_merges([bc[32] + " t"])
    wr.add_bos_token_id(0)
    wr.add_add_bos_token(False)
    for k, v in tm.make_weights("llama", seed).items():
        wr.add_tensor(k, v)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return path
