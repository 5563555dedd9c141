"""Quality of DecoQuant and the RTN baselines on real K/V (captured by bench/capture_kv.py).

For each configuration and bit width: bits per value, relative error of K and V, and of the
attention output with the model's real queries (causal, the last --n-queries positions, GQA),
averaged over layers. Writes docs/results/quality_<model>.json and a Markdown table.

    python bench/capture_kv.py --model ... --out ~/.cache/decoquant/kv/smollm2-sotu-2048.npz
    python bench/quality_kv.py ~/.cache/decoquant/kv/smollm2-sotu-2048.npz --name smollm2-135m
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import decoquant
import numpy as np
from decoquant import reference as R

Quant = Callable[[np.ndarray, int], tuple[np.ndarray, float]]  # x, bits -> (x_hat, bits/value)


def dq(preset: str, **kw: object) -> Quant:
    def run(x: np.ndarray, bits: int) -> tuple[np.ndarray, float]:
        c = decoquant.compress(x, bits, preset, **kw)
        return c.decompress(), c.bits_per_value
    return run


def rtn(mode: str, asym: bool = False, group: int = 32, rotate: bool = False, chunk: int = 128) -> Quant:
    def run(x: np.ndarray, bits: int) -> tuple[np.ndarray, float]:
        t, h, hd = x.shape
        if mode == "channel":  # per channel over chunks of tokens
            y = np.concatenate([R.rtn(x[i:i + chunk], bits, "channel", asym) for i in range(0, t, chunk)])
            return y, R.rtn_bits_per_value(bits, "channel", asym, group, chunk, h * hd)
        y = R.rtn(x, bits, mode, asym, group, rotate)
        return y, R.rtn_bits_per_value(bits, mode, asym, group, t, h * hd)
    return run


def kivi(group: int = 32) -> Quant:
    # KIVI's K (per channel over `group` tokens) and V (per token over `group` channels) layouts
    def run_k(x: np.ndarray, bits: int) -> tuple[np.ndarray, float]:
        t = x.shape[0]
        y = np.concatenate([R.rtn(x[i:i + group], bits, "channel", True) for i in range(0, t, group)])
        return y, bits + 32 / group
    return run_k


METHODS: dict[str, tuple[Quant, Quant]] = {  # name -> (K quantizer, V quantizer)
    "dq paper (token, sym, layer, g=.5)": (dq("paper"), dq("paper")),
    "dq paper chunk=256": (dq("paper", chunk=256), dq("paper", chunk=256)),
    "dq token asym": (dq("paper", asym=True), dq("paper", asym=True)),
    "dq token sym, scope=head": (dq("paper", scope="head"), dq("paper", scope="head")),
    "dq token sym, g=0": (dq("paper", gauge=0.0), dq("paper", gauge=0.0)),
    "dq token sym, g=1": (dq("paper", gauge=1.0), dq("paper", gauge=1.0)),
    "dq channel asym": (dq("paper", scale="channel", asym=True), dq("paper", scale="channel", asym=True)),
    "dq channel asym chunk=256": (dq("paper", scale="channel", asym=True, chunk=256),
                                  dq("paper", scale="channel", asym=True, chunk=256)),
    "dq channel sym": (dq("paper", scale="channel"), dq("paper", scale="channel")),
    "dq channel asym g=1": (dq("paper", scale="channel", asym=True, gauge=1.0),
                            dq("paper", scale="channel", asym=True, gauge=1.0)),
    "dq row asym": (dq("paper", scale="row", asym=True), dq("paper", scale="row", asym=True)),
    "rtn token sym": (rtn("token"), rtn("token")),
    "rtn channel asym (per 128 tokens)": (rtn("channel", True), rtn("channel", True)),
    "rtn group32 (llama q4_0/q8_0)": (rtn("group"), rtn("group")),
    "rtn group32 + hadamard (llama as shipped)": (rtn("group", rotate=True), rtn("group", rotate=True)),
    "kivi (K channel/32 tok, V token/32 ch, asym)": (kivi(32), rtn("group", asym=True)),
}


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_pos: np.ndarray) -> np.ndarray:
    """Causal softmax attention in float32 via BLAS: q[nq, Hq, hd], k/v[T, Hkv, hd]."""
    nq, hq, hd = q.shape
    t, hkv, _ = k.shape
    grp = hq // hkv
    out = np.empty_like(q)
    mask = np.arange(t)[None, :] > q_pos[:, None]
    for h in range(hkv):
        qg = q[:, h * grp:(h + 1) * grp].transpose(1, 0, 2).reshape(-1, hd)
        s = (qg @ k[:, h].T) / np.sqrt(hd)
        s = s.reshape(grp, nq, t)
        s[:, mask] = -np.inf
        s -= s.max(axis=2, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=2, keepdims=True)
        out[:, h * grp:(h + 1) * grp] = (p @ v[:, h]).transpose(1, 0, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("npz")
    ap.add_argument("--name", required=True)
    ap.add_argument("--bits", default="2,3,4,8")
    ap.add_argument("--n-queries", type=int, default=256)
    ap.add_argument("--layers", default="all", help="'all' or a comma list")
    ap.add_argument("--methods", default="all", help="'all' or a substring filter, | separated")
    ap.add_argument("--out", default="docs/results")
    args = ap.parse_args()
    with np.load(args.npz) as f:
        d = {k: f[k] for k in f.files}
    q_all, k_all, v_all = d["q"], d["k"], d["v"]
    n_layers, n = k_all.shape[:2]
    layers = range(n_layers) if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    q_pos = np.arange(n - args.n_queries, n)
    methods = METHODS if args.methods == "all" else {
        k: v for k, v in METHODS.items() if any(s in k for s in args.methods.split("|"))}
    rows = []
    for name, (fk, fv) in methods.items():
        for bits in map(int, args.bits.split(",")):
            if "group32" in name and "llama" in name and bits not in (4, 8):
                continue
            ek, ev, ea, bpv = [], [], [], []
            for li in layers:
                k, v = k_all[li].astype(np.float32), v_all[li].astype(np.float32)
                q = q_all[li, q_pos].astype(np.float32)
                kh, bk = fk(k, bits)
                vh, bv = fv(v, bits)
                ref = attention(q, k, v, q_pos)
                ek.append(rel(kh, k))
                ev.append(rel(vh, v))
                ea.append(rel(attention(q, kh, vh, q_pos), ref))
                bpv.append((bk + bv) / 2)
            row = dict(method=name, bits=bits, bits_per_value=float(np.mean(bpv)), k_rel=float(np.mean(ek)),
                       v_rel=float(np.mean(ev)), attn_rel=float(np.mean(ea)), attn_rel_max_layer=float(np.max(ea)))
            rows.append(row)
            print(f"{name:46s} {bits} bpv {row['bits_per_value']:.3f}  K {row['k_rel']:.4f}  V {row['v_rel']:.4f}  "
                  f"attn {row['attn_rel']:.4f} (worst layer {row['attn_rel_max_layer']:.4f})", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    meta = {k: str(v) for k, v in d.items() if k not in ("q", "k", "v", "tokens", "meta_json")}
    meta.update(n_tokens=int(n), n_queries=args.n_queries, layers=list(layers))
    with open(Path(args.out) / f"quality_{args.name}.json", "w") as f:
        json.dump(dict(meta=meta, results=rows), f, indent=1)


if __name__ == "__main__":
    main()
