"""Tiny random GGUF models (llama, qwen2, gemma3 shapes) and a readable NumPy forward pass of them.

The NumPy forward is the spec the runtime's f16 path is checked against: RMS norm, RoPE (NORM for llama,
NEOX for qwen2/gemma3), GQA causal attention (a sliding window on gemma3's local layers), SwiGLU / GeGLU.
K and V are rounded to fp16 as the f16 cache stores them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

SHAPES = {
    # n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer, vocab
    "llama": dict(n_embd=64, n_head=4, n_head_kv=2, head_dim=16, n_ff=96, n_layer=2, vocab=128),
    "qwen2": dict(n_embd=64, n_head=4, n_head_kv=2, head_dim=16, n_ff=96, n_layer=2, vocab=128),
    # gemma3: head_dim != n_embd / n_head, one KV head, 6 layers = 5 local + 1 global, window 8
    "gemma3": dict(n_embd=48, n_head=2, n_head_kv=1, head_dim=32, n_ff=64, n_layer=6, vocab=96),
}
ROPE_BASE = {"llama": 10000.0, "qwen2": 1000000.0, "gemma3": 1000000.0}
GEMMA_WINDOW = 8
GEMMA_BASE_SWA = 10000.0
EPS = 1e-6


def make_weights(arch: str, seed: int = 0) -> dict[str, np.ndarray]:
    s = SHAPES[arch]
    rng = np.random.default_rng(seed)
    E, H, HK, HD, F, V = s["n_embd"], s["n_head"], s["n_head_kv"], s["head_dim"], s["n_ff"], s["vocab"]

    def w(out: int, inp: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((out, inp)) * scale / np.sqrt(inp)).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    t: dict[str, np.ndarray] = {"token_embd.weight": (rng.standard_normal((V, E)) * (0.2 if arch == "gemma3" else 1.0))
                                .astype(np.float32), "output_norm.weight": norm(E)}
    if arch != "llama":  # llama: tied embeddings (SmolLM2); the others get an output matrix
        t["output.weight"] = w(V, E)
    for il in range(s["n_layer"]):
        p = f"blk.{il}."
        t[p + "attn_norm.weight"] = norm(E)
        t[p + "attn_q.weight"] = w(H * HD, E, 2.0)
        t[p + "attn_k.weight"] = w(HK * HD, E, 2.0)
        t[p + "attn_v.weight"] = w(HK * HD, E)
        t[p + "attn_output.weight"] = w(E, H * HD)
        t[p + "ffn_norm.weight"] = norm(E)
        t[p + "ffn_gate.weight"] = w(F, E)
        t[p + "ffn_up.weight"] = w(F, E)
        t[p + "ffn_down.weight"] = w(E, F)
        if arch == "qwen2":
            t[p + "attn_q.bias"] = (0.1 * rng.standard_normal(H * HD)).astype(np.float32)
            t[p + "attn_k.bias"] = (0.1 * rng.standard_normal(HK * HD)).astype(np.float32)
            t[p + "attn_v.bias"] = (0.1 * rng.standard_normal(HK * HD)).astype(np.float32)
        if arch == "gemma3":
            t[p + "attn_q_norm.weight"] = norm(HD)
            t[p + "attn_k_norm.weight"] = norm(HD)
            t[p + "post_attention_norm.weight"] = norm(E)
            t[p + "post_ffw_norm.weight"] = norm(E)
    return t


def write_gguf(path: Path, arch: str, seed: int = 0, arch_name: str | None = None,
               drop: tuple[str, ...] = (), extra_kv: Callable[[object], None] | None = None
               ) -> dict[str, np.ndarray]:
    """extra_kv(writer) adds metadata (e.g. a vocabulary) after the architecture's."""
    import gguf

    s = SHAPES[arch]
    name = arch_name or arch
    wr = gguf.GGUFWriter(str(path), name)
    wr.add_uint32(f"{name}.block_count", s["n_layer"])
    wr.add_uint32(f"{name}.context_length", 2048)
    wr.add_uint32(f"{name}.embedding_length", s["n_embd"])
    wr.add_uint32(f"{name}.feed_forward_length", s["n_ff"])
    wr.add_uint32(f"{name}.attention.head_count", s["n_head"])
    wr.add_uint32(f"{name}.attention.head_count_kv", s["n_head_kv"])
    wr.add_float32(f"{name}.rope.freq_base", ROPE_BASE[arch])
    wr.add_float32(f"{name}.attention.layer_norm_rms_epsilon", EPS)
    if arch == "gemma3":
        wr.add_uint32(f"{name}.attention.key_length", s["head_dim"])
        wr.add_uint32(f"{name}.attention.value_length", s["head_dim"])
        wr.add_uint32(f"{name}.attention.sliding_window", GEMMA_WINDOW)
    if extra_kv is not None:
        extra_kv(wr)
    weights = make_weights(arch, seed)
    for k, v in weights.items():
        if k not in drop:
            wr.add_tensor(k, v)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return weights


# ---------------------------------------------------------------- NumPy forward


def rms_norm(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * w


def rope(x: np.ndarray, pos: np.ndarray, base: float, neox: bool) -> np.ndarray:
    """x [T, H, D] rotated by position: NORM rotates pairs (2i, 2i+1), NEOX pairs (i, i + D/2)."""
    d = x.shape[-1]
    inv = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = pos[:, None].astype(np.float64) * inv[None, :]  # [T, D/2]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    if neox:
        a, b = x[..., : d // 2], x[..., d // 2:]
        return np.concatenate([a * c - b * s, a * s + b * c], axis=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def forward(arch: str, w: dict[str, np.ndarray], tokens: list[int] | np.ndarray,
            kv_hook: Callable[[int, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
            ) -> np.ndarray:
    """Logits [T, vocab] of every token of one sequence starting at position 0.

    kv_hook(layer, k, v) -> (k, v) stands for the cache (k, v: [T, n_head_kv, head_dim]); the
    default is the f16 cache."""
    s = SHAPES[arch]
    H, HK, HD = s["n_head"], s["n_head_kv"], s["head_dim"]
    tokens = np.asarray(tokens)
    T = len(tokens)
    pos = np.arange(T)
    x = w["token_embd.weight"][tokens].astype(np.float64)
    if arch == "gemma3":
        x = x * np.sqrt(s["n_embd"])
    neox = arch != "llama"
    for il in range(s["n_layer"]):
        p = f"blk.{il}."
        g = lambda n: w[p + n].astype(np.float64)  # noqa: E731
        h = rms_norm(x, g("attn_norm.weight"))
        q = h @ g("attn_q.weight").T + (g("attn_q.bias") if arch == "qwen2" else 0)
        k = h @ g("attn_k.weight").T + (g("attn_k.bias") if arch == "qwen2" else 0)
        v = h @ g("attn_v.weight").T + (g("attn_v.bias") if arch == "qwen2" else 0)
        q, k, v = q.reshape(T, H, HD), k.reshape(T, HK, HD), v.reshape(T, HK, HD)
        window = 0
        base = ROPE_BASE[arch]
        if arch == "gemma3":
            q = rms_norm(q, g("attn_q_norm.weight"))
            k = rms_norm(k, g("attn_k_norm.weight"))
            if il % 6 < 5:
                window, base = GEMMA_WINDOW, GEMMA_BASE_SWA
        q, k = rope(q, pos, base, neox), rope(k, pos, base, neox)
        if kv_hook is None:
            k = k.astype(np.float16).astype(np.float64)  # the f16 cache
            v = v.astype(np.float16).astype(np.float64)
        else:
            k, v = (np.asarray(a, np.float64) for a in kv_hook(il, k, v))
        scale = 1.0 / np.sqrt(HD)
        att = np.empty((T, H, HD))
        for hh in range(H):
            kh = hh // (H // HK)
            sc = (q[:, hh] @ k[:, kh].T) * scale  # [T, T]
            i, j = np.meshgrid(pos, pos, indexing="ij")
            mask = j > i
            if window:
                mask |= j <= i - window
            sc = np.where(mask, -np.inf, sc)
            sc = np.exp(sc - sc.max(-1, keepdims=True))
            att[:, hh] = (sc / sc.sum(-1, keepdims=True)) @ v[:, kh]
        o = att.reshape(T, H * HD) @ g("attn_output.weight").T
        if arch == "gemma3":
            o = rms_norm(o, g("post_attention_norm.weight"))
        x = x + o
        h = rms_norm(x, g("ffn_norm.weight"))
        gate, up = h @ g("ffn_gate.weight").T, h @ g("ffn_up.weight").T
        act = gelu_tanh(gate) if arch == "gemma3" else gate / (1.0 + np.exp(-gate))
        f = (act * up) @ g("ffn_down.weight").T
        if arch == "gemma3":
            f = rms_norm(f, g("post_ffw_norm.weight"))
        x = x + f
    x = rms_norm(x, w["output_norm.weight"].astype(np.float64))
    out = w.get("output.weight", w["token_embd.weight"]).astype(np.float64)
    return (x @ out.T).astype(np.float32)


def kld(ref: np.ndarray, ours: np.ndarray) -> np.ndarray:
    def ls(z: np.ndarray) -> np.ndarray:
        z = z.astype(np.float64)
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    lp, lq = ls(ref), ls(ours)
    return (np.exp(lp) * (lp - lq)).sum(-1)
