"""`decoquant demo`: compress a synthetic K/V cache and report size and error (no model needed)."""

from __future__ import annotations

import argparse

import numpy as np


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="compress a synthetic K/V cache and report size and error")
    d.add_argument("--tokens", type=int, default=1024)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from . import attention, compress, kernels, reference

    if args.tokens < 1:
        raise ValueError(f"--tokens must be >= 1, got {args.tokens}")
    rng = np.random.default_rng(args.seed)
    t, h, hd = args.tokens, 3, 64
    k = rng.standard_normal((t, h, hd)).astype(np.float32)
    k[:, :, 5] *= 20.0  # an outlier channel, as real K caches have
    v = rng.standard_normal((t, h, hd)).astype(np.float32)
    q = rng.standard_normal((1, 9, hd)).astype(np.float32)
    dense = reference.attention_dense(q, k, v)
    print(f"kernels: {kernels()}   tokens: {t}, KV heads: {h} x {hd}")
    print(f"{'cache':<10} {'bits/value':>10} {'K rel err':>10} {'attn rel err':>12}")
    for preset in ("paper", "default"):
        for bits in (2, 4, 8):
            kc = compress(k, bits, preset)
            vc = compress(v, bits, preset)
            ek = np.linalg.norm(kc.decompress() - k) / np.linalg.norm(k)
            out = attention(q, kc, vc)
            ea = np.linalg.norm(out - dense) / np.linalg.norm(dense)
            print(f"{preset + str(bits):<10} {kc.bits_per_value:>10.3f} {ek:>10.4f} {ea:>12.4f}")
    return 0
