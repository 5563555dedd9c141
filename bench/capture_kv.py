#!/usr/bin/env python3
"""Capture per-layer Q, K, V activations (after RoPE) from a GGUF model.

The text is run through llama.cpp (via llama-cpp-python) in ONE batch, with a
``cb_eval`` graph callback that copies the tensors named ``Qcur-<il>``,
``Kcur-<il>`` and ``Vcur-<il>`` out of the compute graph.

llama.cpp gives several graph nodes the same name: for Q and K the name is
applied after the projection matmul, after the bias add (Qwen2), after the
reshape to [head_dim, n_head, n_tokens], and finally after ``ggml_rope_ext``.
The callback sees them in topological order, so the post-RoPE tensor is the
last one seen per layer; the script also checks that its op is ROPE.
For V (no RoPE) the last one is the reshaped projection (+ bias).

Output (.npz, all float32):
  q[L, N, n_head, head_dim], k[L, N, n_kv_head, head_dim], v[L, N, n_kv_head, head_dim]
plus ``tokens`` (int32) and metadata (``meta_json`` and one 0-d array per key).

With ``--validate-layers`` the script also captures llama.cpp's own attention
output (``kqv_out-<il>``, before the output projection) and checks that
causal softmax(Q K^T / sqrt(d)) V recomputed in NumPy from the captured
tensors matches it; it repeats the check with the pre-RoPE Q/K (which must
NOT match), and re-applies RoPE in NumPy to the pre-RoPE K.

Reproduce the cached files (offset 10276186 = start of the sotu.txt address
that begins "Madam Speaker, Mr. Vice President, Members of Congress, the First Lady"):
  for m in smollm2-135m-instruct qwen2.5-coder-1.5b-instruct; do
    python bench/capture_kv.py --model ~/.cache/decoquant/models/$m.gguf \\
        --text /work/shared/data/sotu.txt --n-tokens 2048 --offset-chars 10276186 \\
        --validate-layers all --out ~/.cache/decoquant/kv/$m-sotu-2048.npz
  done

Needs llama-cpp-python 0.3.36. On CPUs with AMX, a -march=native build of it
(the default) segfaults in ggml_backend_amx_mul_mat on batched matmuls; build it
with GGML_NATIVE=OFF and explicit AVX-512 flags, or pass --no-extra-bufts.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]

GGML_MAX_DIMS = 4
GGML_MAX_OP_PARAMS = 64
GGML_MAX_SRC = 10
GGML_MAX_NAME = 64
GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1
GGML_TYPE_BF16 = 30
GGML_LOG_LEVEL_WARN = 3
ROPE_TYPE_NORM = 0
ROPE_TYPE_NEOX = 2

CAPTURE_RE = re.compile(r"^(Qcur|Kcur|Vcur|kqv_out)-(\d+)$")


class GgmlTensor(ctypes.Structure):
    """Mirror of ``struct ggml_tensor`` (ggml/include/ggml.h, ggml 0.25.x)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


GgmlTensorP = ctypes.POINTER(GgmlTensor)


def load_ggml() -> ctypes.CDLL:
    """Open the libggml-base that llama_cpp itself loaded (same path -> same handle)."""
    lib_dir = os.environ.get("LLAMA_CPP_LIB_PATH") or str(Path(llama_cpp.__file__).parent / "lib")
    lib = ctypes.CDLL(str(Path(lib_dir) / "libggml-base.so"))
    lib.ggml_nbytes.argtypes = [GgmlTensorP]
    lib.ggml_nbytes.restype = ctypes.c_size_t
    lib.ggml_op_name.argtypes = [ctypes.c_int]
    lib.ggml_op_name.restype = ctypes.c_char_p
    lib.ggml_type_name.argtypes = [ctypes.c_int]
    lib.ggml_type_name.restype = ctypes.c_char_p
    lib.ggml_tensor_overhead.argtypes = []
    lib.ggml_tensor_overhead.restype = ctypes.c_size_t
    lib.ggml_backend_tensor_get.argtypes = [GgmlTensorP, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    lib.ggml_backend_tensor_get.restype = None
    # ggml_tensor_overhead() == sizeof(struct ggml_object) (32) + sizeof(struct ggml_tensor)
    overhead = int(lib.ggml_tensor_overhead())
    if overhead != 32 + ctypes.sizeof(GgmlTensor):
        raise RuntimeError(
            f"struct ggml_tensor layout mismatch: overhead {overhead}, mirror {ctypes.sizeof(GgmlTensor)}"
        )
    return lib


def read_tensor(lib: ctypes.CDLL, tp: Any) -> tuple[F32, str, str]:
    """Copy a ggml tensor into a float32 array of shape (ne3, ne2, ne1, ne0) (ne0 fastest)."""
    t: GgmlTensor = tp.contents
    ne = [int(x) for x in t.ne]
    nb = [int(x) for x in t.nb]
    type_name = lib.ggml_type_name(t.type).decode()
    op_name = lib.ggml_op_name(t.op).decode()
    dtype: type[np.generic]
    if t.type == GGML_TYPE_F32:
        dtype = np.float32
    elif t.type in (GGML_TYPE_F16, GGML_TYPE_BF16):
        dtype = np.float16 if t.type == GGML_TYPE_F16 else np.uint16
    else:
        raise TypeError(f"unsupported tensor type {type_name} for {t.name.decode()}")
    nbytes = int(lib.ggml_nbytes(tp))
    raw = np.empty(nbytes, dtype=np.uint8)
    lib.ggml_backend_tensor_get(tp, raw.ctypes.data_as(ctypes.c_void_p), 0, nbytes)
    # ggml strides are in bytes and may describe a non-contiguous view
    view = np.lib.stride_tricks.as_strided(
        raw.view(dtype), shape=tuple(reversed(ne)), strides=tuple(reversed(nb)), writeable=False
    )
    if t.type == GGML_TYPE_BF16:
        arr = (view.astype(np.uint32) << 16).view(np.float32)
    else:
        arr = view.astype(np.float32)  # always a copy, owned and contiguous
    return np.ascontiguousarray(arr), type_name, op_name


@dataclass
class Captured:
    """One captured tensor (the latest node seen with a given name)."""

    data: F32
    type_name: str
    op_name: str


@dataclass
class CaptureState:
    lib: ctypes.CDLL
    validate_layers: set[int]
    latest: dict[tuple[str, int], Captured] = field(default_factory=dict)
    pre_rope: dict[tuple[str, int], Captured] = field(default_factory=dict)
    op_chain: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    n_calls: int = 0
    error: str | None = None

    def wants(self, name: str) -> tuple[str, int] | None:
        m = CAPTURE_RE.match(name)
        if m is None:
            return None
        kind, il = m.group(1), int(m.group(2))
        if kind == "kqv_out" and il not in self.validate_layers:
            return None
        return kind, il

    def callback(self, t: ctypes.c_void_p, ask: bool, _user_data: ctypes.c_void_p) -> bool:
        # Exceptions must not escape a ctypes callback (they would be printed and
        # the callback would return False, which stops the graph split).
        try:
            tp = ctypes.cast(t, GgmlTensorP)
            key = self.wants(tp.contents.name.decode(errors="replace"))
            if ask:
                return key is not None
            if key is None:
                return True
            self.n_calls += 1
            arr, type_name, op_name = read_tensor(self.lib, tp)
            self.op_chain.setdefault(key, []).append(f"{op_name}:{type_name}:{list(tp.contents.ne)}")
            prev = self.latest.get(key)
            if prev is not None and key[0] in ("Qcur", "Kcur") and key[1] in self.validate_layers and op_name == "ROPE":
                self.pre_rope[key] = prev
            self.latest[key] = Captured(arr, type_name, op_name)
        except Exception as e:  # noqa: BLE001 - reported after decode
            if self.error is None:
                self.error = f"{type(e).__name__}: {e}"
        return True


def meta_str(model: Any, key: str) -> str | None:
    buf = ctypes.create_string_buffer(4096)
    n = llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    return buf.value.decode(errors="replace") if n >= 0 else None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


_LOG_CB: Any = None


def quiet_logs(verbose: bool) -> None:
    """Only forward llama.cpp warnings and errors (everything with --verbose)."""
    global _LOG_CB

    def _log(level: int, text: bytes | None, _ud: ctypes.c_void_p) -> None:
        if text and (verbose or level >= GGML_LOG_LEVEL_WARN):
            sys.stderr.write(text.decode(errors="replace"))

    _LOG_CB = llama_cpp.llama_log_callback(_log)
    llama_cpp.llama_log_set(_LOG_CB, ctypes.c_void_p())


def load_model(path: Path, extra_bufts: bool = True) -> Any:
    """Load a GGUF on the CPU.

    extra_bufts=False disables llama.cpp's extra CPU buffer types (weight repacking
    and the AMX backend); that avoids the segfault in ggml_backend_amx_mul_mat seen
    with builds made with -march=native on AMX CPUs.
    """
    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = 0
    mparams.use_extra_bufts = extra_bufts
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
    if not model:
        raise RuntimeError(f"failed to load {path}")
    return model


def tokenize(vocab: Any, text: str, add_bos: bool) -> list[int]:
    data = text.encode("utf-8")
    cap = len(data) + 16
    buf = (llama_cpp.llama_token * cap)()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, cap, add_bos, False)
    if n < 0:
        raise RuntimeError("tokenization failed")
    return list(buf[:n])


def tokens_from_text(vocab: Any, text: str, offset: int, n_tokens: int, add_bos: bool) -> tuple[list[int], int]:
    """First n_tokens tokens of text[offset:]; returns (tokens, chars used)."""
    n_chars = 8 * n_tokens
    while True:
        chunk = text[offset : offset + n_chars]
        toks = tokenize(vocab, chunk, add_bos)
        if len(toks) >= n_tokens + 8 or offset + n_chars >= len(text):
            break
        n_chars *= 2
    if len(toks) < n_tokens:
        raise ValueError(f"text from offset {offset} has only {len(toks)} tokens")
    return toks[:n_tokens], len(chunk)


def make_context(
    model: Any,
    n_ctx: int,
    n_batch: int,
    n_threads: int,
    flash_attn: bool,
    kv_type: int,
    cb: Any = None,
) -> Any:
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = n_ctx
    cparams.n_batch = n_batch
    cparams.n_ubatch = n_batch
    cparams.n_seq_max = 1
    cparams.n_threads = n_threads
    cparams.n_threads_batch = n_threads
    cparams.flash_attn_type = (
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    cparams.type_k = kv_type
    cparams.type_v = kv_type
    cparams.no_perf = True
    if cb is not None:
        cparams.cb_eval = cb
        cparams.cb_eval_user_data = None
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    if not ctx:
        raise RuntimeError("failed to create llama_context")
    return ctx


def decode(ctx: Any, tokens: list[int], logits_all: bool) -> None:
    n = len(tokens)
    batch = llama_cpp.llama_batch_init(n, 0, 1)
    try:
        for i, tok in enumerate(tokens):
            batch.token[i] = tok
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = logits_all or i == n - 1
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
    finally:
        llama_cpp.llama_batch_free(batch)


# ---------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------


def causal_attention(q: F32, k: F32, v: F32) -> tuple[F32, dict[str, float]]:
    """q[N, H, d], k/v[N, Hkv, d] -> out[N, H, d] and some attention statistics."""
    n, n_head, d = q.shape
    group = n_head // k.shape[1]
    mask = np.triu(np.ones((n, n), dtype=bool), 1)
    out = np.empty_like(q)
    ent = sink = local = 0.0
    idx = np.arange(n)
    for h in range(n_head):
        kv = h // group
        s = (q[:, h, :] @ k[:, kv, :].T) / np.float32(np.sqrt(d))
        s[mask] = -np.inf
        s -= s.max(axis=1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        out[:, h, :] = p @ v[:, kv, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            ent += float(np.mean(-np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=1)[1:] / np.log(idx[1:] + 1)))
        sink += float(p[1:, 0].mean())
        local += float(np.mean([p[i, max(0, i - 15) : i + 1].sum() for i in range(16, n, 7)]))
    stats = {
        "entropy_over_uniform": ent / n_head,
        "mean_p_token0": sink / n_head,
        "mean_p_last16": local / n_head,
    }
    return out, stats


def rel_err(a: F32, b: F32) -> float:
    return float(np.linalg.norm(a - b)) / max(float(np.linalg.norm(b)), 1e-30)


def apply_rope(x: F32, base: float, freq_scale: float, rope_type: int) -> F32:
    """Reference RoPE on x[N, H, d] at positions 0..N-1 (no YaRN/ext factors)."""
    n, _, d = x.shape
    inv = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = (np.arange(n, dtype=np.float64)[:, None] * freq_scale) * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x64 = x.astype(np.float64)
    if rope_type == ROPE_TYPE_NEOX:
        a, b = x64[..., : d // 2], x64[..., d // 2 :]
        out = np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
    else:
        a, b = x64[..., 0::2], x64[..., 1::2]
        out = np.empty_like(x64)
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
    return out.astype(np.float32)


# ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="GGUF model file")
    p.add_argument("--text", type=Path, required=True, help="UTF-8 text file")
    p.add_argument("--n-tokens", type=int, default=2048)
    p.add_argument("--offset-chars", type=int, default=0, help="character (not byte) offset into the text")
    p.add_argument("--out", type=Path, required=True, help="output .npz")
    p.add_argument("--name", default=None, help="model name for the metadata (default: file stem)")
    p.add_argument("--bos", choices=["auto", "yes", "no"], default="auto", help="prepend BOS (auto: model's add_bos)")
    p.add_argument("--flash-attn", action="store_true", help="use flash attention (default off)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument(
        "--validate-layers",
        default="first,mid,last",
        help="comma list of layer indices (or first/mid/last/all/none) to check against llama.cpp's kqv_out",
    )
    p.add_argument(
        "--no-extra-bufts",
        action="store_true",
        help="disable weight repacking / AMX buffers (workaround for AMX crashes in -march=native builds)",
    )
    p.add_argument("--verbose", action="store_true", help="show llama.cpp info logs")
    return p.parse_args(argv)


def resolve_layers(spec: str, n_layer: int) -> list[int]:
    if spec in ("", "none"):
        return []
    if spec == "all":
        return list(range(n_layer))
    names = {"first": 0, "mid": n_layer // 2, "last": n_layer - 1}
    return sorted({names[s] if s in names else int(s) for s in spec.split(",")})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logs(args.verbose)
    lib = load_ggml()

    t0 = time.time()
    model = load_model(args.model, extra_bufts=not args.no_extra_bufts)
    vocab = llama_cpp.llama_model_get_vocab(model)
    arch = meta_str(model, "general.architecture") or "?"
    n_layer = int(llama_cpp.llama_model_n_layer(model))
    n_head = int(llama_cpp.llama_model_n_head(model))
    n_head_kv = int(llama_cpp.llama_model_n_head_kv(model))
    n_embd = int(llama_cpp.llama_model_n_embd(model))
    head_dim = int(meta_str(model, f"{arch}.attention.key_length") or n_embd // n_head)
    rope_base = float(meta_str(model, f"{arch}.rope.freq_base") or 10000.0)
    rope_scale = float(llama_cpp.llama_model_rope_freq_scale_train(model))
    rope_type = int(llama_cpp.llama_model_rope_type(model))
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab)) if args.bos == "auto" else args.bos == "yes"
    name = args.name or args.model.stem
    print(
        f"[model] {name}: arch={arch} n_layer={n_layer} n_head={n_head} n_head_kv={n_head_kv} "
        f"head_dim={head_dim} rope_type={rope_type} rope_base={rope_base} rope_scale={rope_scale} add_bos={add_bos}"
    )

    text = args.text.read_text(encoding="utf-8")
    tokens, n_chars = tokens_from_text(vocab, text, args.offset_chars, args.n_tokens, add_bos)
    n = len(tokens)
    preview = text[args.offset_chars : args.offset_chars + 80].replace("\n", " ")
    print(f"[text] {args.text} offset={args.offset_chars} -> {n} tokens; starts: {preview!r}")

    validate = [il for il in resolve_layers(args.validate_layers, n_layer) if 0 <= il < n_layer]
    state = CaptureState(lib=lib, validate_layers=set(validate))
    cb = llama_cpp.ggml_backend_sched_eval_callback(state.callback)
    ctx = make_context(model, n, n, args.threads, args.flash_attn, llama_cpp.GGML_TYPE_F16, cb)
    t1 = time.time()
    decode(ctx, tokens, logits_all=False)
    t2 = time.time()
    if state.error is not None:
        raise RuntimeError(f"error inside eval callback: {state.error}")
    print(f"[decode] {n} tokens in one batch: {t2 - t1:.1f} s ({state.n_calls} tensors read)")

    def stack(kind: str, heads: int) -> F32:
        out = np.empty((n_layer, n, heads, head_dim), dtype=np.float32)
        for il in range(n_layer):
            c = state.latest.get((kind, il))
            if c is None:
                raise RuntimeError(f"{kind}-{il} was never captured")
            if kind in ("Qcur", "Kcur") and c.op_name != "ROPE":
                raise RuntimeError(f"last {kind}-{il} has op {c.op_name}, expected ROPE")
            arr = c.data.reshape(-1, n, heads, head_dim) if c.data.size == n * heads * head_dim else None
            if arr is None or arr.shape[0] != 1:
                raise RuntimeError(f"{kind}-{il} has shape {c.data.shape}, expected ({n}, {heads}, {head_dim})")
            out[il] = arr[0]
        return out

    q = stack("Qcur", n_head)
    k = stack("Kcur", n_head_kv)
    v = stack("Vcur", n_head_kv)
    for kind in ("Qcur", "Kcur", "Vcur"):
        print(f"[names] {kind}-0 nodes in graph order (op:type:ne): {' -> '.join(state.op_chain[(kind, 0)])}")

    # ---- validation against llama.cpp's own attention output ----
    checks: dict[str, Any] = {}
    for il in validate:
        ref_c = state.latest.get(("kqv_out", il))
        if ref_c is None:
            print(f"[check] layer {il}: kqv_out not captured")
            continue
        ref = ref_c.data.reshape(n, n_head, head_dim)
        out, stats = causal_attention(q[il], k[il], v[il])
        err = rel_err(out, ref)
        line = f"[check] layer {il:2d}: attn(post-RoPE Q,K) vs kqv_out rel_err={err:.2e}"
        res: dict[str, Any] = {"rel_err_post_rope": err, **stats}
        pq, pk = state.pre_rope.get(("Qcur", il)), state.pre_rope.get(("Kcur", il))
        if pq is not None and pk is not None:
            qpre = pq.data.reshape(n, n_head, head_dim)
            kpre = pk.data.reshape(n, n_head_kv, head_dim)
            out_pre, _ = causal_attention(qpre, kpre, v[il])
            res["rel_err_pre_rope"] = rel_err(out_pre, ref)
            res["rope_numpy_rel_err_k"] = rel_err(apply_rope(kpre, rope_base, rope_scale, rope_type), k[il])
            res["pos0_unchanged_k"] = rel_err(k[il, 0], kpre[0])
            line += (
                f" | pre-RoPE rel_err={res['rel_err_pre_rope']:.2e}"
                f" | numpy-RoPE(K_pre) vs K rel_err={res['rope_numpy_rel_err_k']:.2e}"
            )
        line += (
            f" | entropy/log(i+1)={stats['entropy_over_uniform']:.3f}"
            f" p(tok0)={stats['mean_p_token0']:.3f} p(last16)={stats['mean_p_last16']:.3f}"
        )
        print(line)
        checks[str(il)] = res

    # ---- K outlier summary ----
    kabs = np.abs(k)
    k_max = kabs.max(axis=(1, 2, 3))
    chan_max = kabs.max(axis=1).reshape(n_layer, -1)  # per (kv_head, dim) channel
    chan_ratio = chan_max.max(axis=1) / np.median(chan_max, axis=1)
    print("[K] layer: max|K| (at kv_head,dim) | max/median of per-channel max|K| | max|Q| | max|V|")
    for il in range(n_layer):
        hd = int(np.argmax(chan_max[il]))
        print(
            f"[K] {il:2d}: {k_max[il]:8.2f} ({hd // head_dim},{hd % head_dim:3d}) | {chan_ratio[il]:6.1f}"
            f" | {np.abs(q[il]).max():8.2f} | {np.abs(v[il]).max():8.2f}"
        )

    text_bytes = args.text.read_bytes()
    meta: dict[str, Any] = {
        "model_name": name,
        "model_file": args.model.name,
        "model_sha256": sha256_file(args.model),
        "arch": arch,
        "n_layer": n_layer,
        "n_head": n_head,
        "n_kv_head": n_head_kv,
        "head_dim": head_dim,
        "rope_type": rope_type,
        "rope_freq_base": rope_base,
        "rope_freq_scale": rope_scale,
        "n_tokens": n,
        "add_bos": add_bos,
        "text_file": args.text.name,
        "text_sha256": hashlib.sha256(text_bytes).hexdigest(),
        "text_offset_chars": args.offset_chars,
        "text_span_chars": n_chars,
        "text_span_sha256": hashlib.sha256(
            text[args.offset_chars : args.offset_chars + n_chars].encode("utf-8")
        ).hexdigest(),
        "flash_attn": args.flash_attn,
        "kv_cache_type": "f16",
        "capture": "cb_eval: last Qcur-/Kcur- node per layer (op ROPE), last Vcur- node",
        "captured_type": state.latest[("Kcur", 0)].type_name,
        "llama_cpp_python": llama_cpp.__version__,
        "checks": checks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, npt.NDArray[Any]] = {
        "q": q,
        "k": k,
        "v": v,
        "tokens": np.asarray(tokens, dtype=np.int32),
        "meta_json": np.asarray(json.dumps(meta)),
    }
    arrays.update({key: np.asarray(val) for key, val in meta.items() if key != "checks"})
    np.savez(args.out, **arrays)  # type: ignore[arg-type]  # numpy stubs type **kwds as allow_pickle
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    print(f"[out] {args.out} q{list(q.shape)} k{list(k.shape)} v{list(v.shape)} ({time.time() - t0:.1f} s total)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
