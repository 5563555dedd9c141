"""libdecoquant_cuda against the CPU library and the NumPy reference (decoquant.cuda).

Every test here is marked `cuda` and skipped, with the reason, where torch, a CUDA GPU (sm_90)
or the CUDA build is missing. Checks: GPU decompose-on-append writes the CPU's bytes (codes
identical apart from rounding ties); fused attention (fast tensor-core path and generic path,
decode and causal prefill, GQA, ragged batches with FP16 residual windows) matches dense
attention on the dequantized K/V within 1e-3 relative.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CONFIGS, kv_like
from decoquant import cuda as dqc
from decoquant import reference as R

OK, WHY = dqc.available()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not OK, reason=f"CUDA kernels unavailable: {WHY}")]

if OK:
    import torch
    from decoquant import core
    from decoquant._lib import ffi, lib

DEC_CONFIGS = CONFIGS  # the option sets the CPU tests use


def _opts(bits: int, cfg: dict, chunk: int = 128) -> R.Options:
    kw = dict(cfg)
    preset = kw.pop("preset", "paper")
    return R.options(bits, preset, chunk=chunk, **kw)


def _cpu_blocks(x: np.ndarray, opts: R.Options) -> list[np.ndarray]:
    """dq_decompose per chunk of x[n_chunks, n, h, hd]."""
    nc, n, h, hd = x.shape
    cfg = core.make_config(opts, h, hd)
    out = []
    for i in range(nc):
        data = np.zeros(lib.dq_block_size(cfg, n), np.uint8)
        xi = np.ascontiguousarray(x[i])
        assert lib.dq_decompose(cfg, ffi.from_buffer("float[]", xi), n, ffi.from_buffer(data)) == 0
        out.append(data)
    return out


def _codes(opts: R.Options, block: np.ndarray, n: int, h: int, hd: int) -> np.ndarray:
    cfg = core.make_config(opts, h, hd)
    c = np.empty((n, h * hd // 16, 16), np.uint8)
    assert lib.dq_block_codes(cfg, ffi.from_buffer(np.ascontiguousarray(block)), n, ffi.from_buffer(c)) == 0
    return c


@pytest.mark.parametrize("shape", [(128, 8, 128), (100, 3, 64)], ids=["128x8x128", "100x3x64"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("cfg", DEC_CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_decompose_matches_cpu(rng: np.random.Generator, shape: tuple, bits: int, cfg: dict) -> None:
    n, h, hd = shape
    nc = 3
    x = kv_like(rng, nc * n, h, hd).reshape(nc, n, h, hd)
    opts = _opts(bits, cfg, n)
    gpu = dqc.decompose(torch.from_numpy(x).cuda(), opts=opts).cpu().numpy()
    cpu = _cpu_blocks(x, opts)
    lay_codes = lib.dq_block_layout(core.make_config(opts, h, hd), n).codes
    n_code_diff = n_param_diff = 0
    for i in range(nc):
        assert gpu[i].shape == cpu[i].shape
        # B and the scales: identical fp16 values (a rare 1-ulp difference from pow() allowed)
        a = gpu[i][:lay_codes].view(np.uint16).astype(np.int64)
        b = cpu[i][:lay_codes].view(np.uint16).astype(np.int64)
        assert np.abs(a - b).max() <= 1
        n_param_diff += int(np.count_nonzero(a != b))
        d = _codes(opts, gpu[i], n, h, hd).astype(int) - _codes(opts, cpu[i], n, h, hd).astype(int)
        assert np.abs(d).max() <= 1
        n_code_diff += int(np.count_nonzero(d))
        # the padding after the codes is zero, as on the CPU
        assert not gpu[i][lay_codes + n * h * hd * bits // 8:].any()
    total = nc * n * h * hd
    assert n_code_diff <= max(2, total // 20000), n_code_diff
    assert n_param_diff <= max(2, a.size * nc // 1000), n_param_diff


def test_decompose_fp16_input_and_exact_bytes(rng: np.random.Generator) -> None:
    """fp16 input decomposes as its fp32 value; Llama-3-like chunks come out byte-identical."""
    x = kv_like(rng, 4 * 128, 8, 128).reshape(4, 128, 8, 128).astype(np.float16)
    opts = _opts(4, dict(preset="default"))
    gpu = dqc.decompose(torch.from_numpy(x).cuda(), opts=opts).cpu().numpy()
    cpu = np.stack(_cpu_blocks(x.astype(np.float32), opts))
    assert np.count_nonzero(gpu != cpu) <= 4


# ---------------------------------------------------------------- attention


def _batch(rng: np.random.Generator, lens: list[int], nkv: int, hd: int, ok: R.Options, ov: R.Options,
           chunk: int = 128) -> dict:
    """Per sequence: full blocks (CPU-compressed) + FP16 residual; and the dequantized K/V."""
    krows, vrows, table, kres, vres, kfull, vfull = [], [], [], [], [], [], []
    for length in lens:
        k = kv_like(rng, length, nkv, hd)
        v = kv_like(rng, length, nkv, hd, outliers=False)
        nb = length // chunk
        ids = []
        kh = np.zeros((0, nkv, hd), np.float32)
        vh = kh
        if nb:
            kc = core.Compressed(np.ascontiguousarray(k[: nb * chunk]), ok)
            vc = core.Compressed(np.ascontiguousarray(v[: nb * chunk]), ov)
            for kb, vb in zip(kc.blocks, vc.blocks):
                ids.append(len(krows))
                krows.append(kb.data)
                vrows.append(vb.data)
            kh, vh = kc.decompress(), vc.decompress()
        kr = k[nb * chunk:].astype(np.float16)
        vr = v[nb * chunk:].astype(np.float16)
        table.append(ids)
        kres.append(torch.from_numpy(kr).cuda() if len(kr) else None)
        vres.append(torch.from_numpy(vr).cuda() if len(vr) else None)
        kfull.append(np.concatenate([kh, kr.astype(np.float32)]))
        vfull.append(np.concatenate([vh, vr.astype(np.float32)]))
    if not krows:
        krows = [np.zeros(dqc.block_size(ok, chunk, nkv, hd), np.uint8)]
        vrows = [np.zeros(dqc.block_size(ov, chunk, nkv, hd), np.uint8)]
    kb = torch.from_numpy(np.stack(krows)).cuda()
    vb = torch.from_numpy(np.stack(vrows)).cuda()
    return dict(kb=kb, vb=vb, table=table, kres=kres, vres=vres, kfull=kfull, vfull=vfull)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b))


ATTN_CONFIGS = [
    ("paper", dict(preset="paper"), dict(preset="paper")),
    ("default", dict(preset="default"), dict(preset="default")),
    ("token-asym/channel-sym", dict(scale="token", asym=True), dict(scale="channel", asym=False)),
    ("channel-head-scope", dict(preset="default", scope="head"), dict(preset="paper")),
]
HEADS = [(8, 2), (6, 1), (2, 2), (16, 2)]  # grp 4, 6, 1, 8


@pytest.mark.parametrize("chunk", [128, 256])
@pytest.mark.parametrize("heads", HEADS, ids=lambda h: f"{h[0]}q{h[1]}kv")
@pytest.mark.parametrize("cfg", ATTN_CONFIGS, ids=lambda c: c[0])
def test_attention_fast_matches_reference(rng: np.random.Generator, cfg: tuple, heads: tuple, chunk: int) -> None:
    n_head, nkv = heads
    hd = 128
    ok, ov = _opts(4, cfg[1], chunk), _opts(4, cfg[2], chunk)
    lens = [chunk * 5 + 37, 2 * chunk, chunk * 9 + 100, 31, chunk, 0, chunk * 3 + 32]
    b = _batch(rng, lens, nkv, hd, ok, ov, chunk=chunk)
    q = rng.standard_normal((len(lens), n_head, hd)).astype(np.float32)
    call = dqc.prepare_attention(torch.from_numpy(q).cuda(), b["kb"], b["vb"], b["table"], ok, ov, chunk=chunk,
                                 k_res=b["kres"], v_res=b["vres"], path="fast")
    assert call.path == "fast"
    out = call().cpu().numpy()[:, 0]
    for s, length in enumerate(lens):
        if length == 0:
            assert np.all(out[s] == 0)
            continue
        ref = R.attention_dense(q[s][None], b["kfull"][s], b["vfull"][s])[0]
        assert _rel(out[s], ref) <= 1e-3, (s, _rel(out[s], ref))


@pytest.mark.parametrize("cfg", ATTN_CONFIGS, ids=lambda c: c[0])
def test_attention_int8_and_fp16_kernels(rng: np.random.Generator, cfg: tuple) -> None:
    """GQA <= 4 runs on either fast kernel (int8 by default, fp16 subnormals on request): both
    match the reference and each other; the int8 kernel refuses GQA > 4."""
    n_head, nkv, hd = 16, 4, 128
    ok, ov = _opts(4, cfg[1]), _opts(4, cfg[2])
    lens = [128 * 6 + 50, 128 * 3, 40, 128 * 2 + 1]
    b = _batch(rng, lens, nkv, hd, ok, ov)
    q = torch.from_numpy(rng.standard_normal((len(lens), n_head, hd)).astype(np.float32)).cuda()
    outs = {}
    for variant in ("default", "int8", "subnormal"):
        call = dqc.prepare_attention(q, b["kb"], b["vb"], b["table"], ok, ov, k_res=b["kres"], v_res=b["vres"],
                                     path="fast", variant=variant)
        outs[variant] = call().cpu().numpy()[:, 0]
    assert np.array_equal(outs["default"], outs["int8"])
    qn = q.cpu().numpy()
    for s in range(len(lens)):
        ref = R.attention_dense(qn[s][None], b["kfull"][s], b["vfull"][s])[0]
        errs = {v: _rel(outs[v][s], ref) for v in ("int8", "subnormal")}
        assert max(errs.values()) <= 1e-3, (s, errs)
    b6 = _batch(rng, [128], 1, hd, ok, ov)
    q6 = torch.zeros((1, 6, hd), device="cuda")
    with pytest.raises(RuntimeError, match="unsupported"):
        dqc.attention(q6, b6["kb"], b6["vb"], b6["table"], ok, ov, path="fast", variant="int8")


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("cfg", [dict(preset="paper"), dict(preset="default"), dict(scale="row", asym=True),
                                 dict(scope="head"), dict(scale="channel", scope="head", asym=False)],
                         ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_attention_generic_matches_reference(rng: np.random.Generator, bits: int, cfg: dict) -> None:
    n_head, nkv, hd = 6, 2, 64
    ok = _opts(bits, cfg, 64)
    ov = _opts(bits, dict(preset="default"), 64)
    lens = [64 * 4 + 17, 64, 40]
    b = _batch(rng, lens, nkv, hd, ok, ov, chunk=64)
    q = rng.standard_normal((len(lens), n_head, hd)).astype(np.float32)
    out = dqc.attention(torch.from_numpy(q).cuda(), b["kb"], b["vb"], b["table"], ok, ov, chunk=64,
                        k_res=b["kres"], v_res=b["vres"], path="generic").cpu().numpy()[:, 0]
    for s in range(len(lens)):
        ref = R.attention_dense(q[s][None], b["kfull"][s], b["vfull"][s])[0]
        assert _rel(out[s], ref) <= 1e-4


def test_fast_and_generic_agree_with_cpu_kernel(rng: np.random.Generator) -> None:
    """Llama-3 head shapes, one sequence: GPU fast, GPU generic and the CPU fused kernel."""
    nkv, n_head, hd, length = 8, 32, 128, 128 * 12 + 77
    ok = ov = _opts(4, dict(preset="default"))
    b = _batch(rng, [length], nkv, hd, ok, ov)
    q = rng.standard_normal((1, n_head, hd)).astype(np.float32)
    qt = torch.from_numpy(q).cuda()
    fast = dqc.attention(qt, b["kb"], b["vb"], b["table"], ok, ov, k_res=b["kres"], v_res=b["vres"],
                         path="fast").cpu().numpy()[:, 0]
    gen = dqc.attention(qt, b["kb"], b["vb"], b["table"], ok, ov, k_res=b["kres"], v_res=b["vres"],
                        path="generic").cpu().numpy()[:, 0]
    rng2 = np.random.default_rng(7)
    kx = kv_like(rng2, length, nkv, hd)
    vx = kv_like(rng2, length, nkv, hd, outliers=False)
    nb = length // 128
    kc = core.compress(kx[: nb * 128], 4, "default", chunk=128)
    vc = core.compress(vx[: nb * 128], 4, "default", chunk=128)
    cpu = core.attention(q, kc, vc, kx[nb * 128:].astype(np.float16).astype(np.float32),
                         vx[nb * 128:].astype(np.float16).astype(np.float32), n_threads=4)
    kb = torch.from_numpy(np.stack([x.data for x in kc.blocks])).cuda()
    vb = torch.from_numpy(np.stack([x.data for x in vc.blocks])).cuda()
    kr = torch.from_numpy(kx[nb * 128:].astype(np.float16)).cuda()
    vr = torch.from_numpy(vx[nb * 128:].astype(np.float16)).cuda()
    gpu = dqc.attention(qt, kb, vb, [list(range(nb))], ok, ov, k_res=[kr], v_res=[vr]).cpu().numpy()[0]
    assert _rel(gpu, cpu) <= 1e-3
    assert _rel(fast, gen) <= 1e-3
    ref = R.attention_dense(q, b["kfull"][0], b["vfull"][0])
    assert _rel(gen, ref) <= 1e-4


def test_prefill_causal(rng: np.random.Generator) -> None:
    nkv, n_head, hd = 2, 8, 128
    ok, ov = _opts(4, dict(preset="paper")), _opts(4, dict(preset="default"))
    lens = [128 * 3 + 50, 128 * 2]
    b = _batch(rng, lens, nkv, hd, ok, ov)
    n_q = 24
    q = rng.standard_normal((len(lens), n_q, n_head, hd)).astype(np.float32)
    pos = np.stack([np.sort(rng.choice(length, n_q, replace=False)) for length in lens]).astype(np.int32)
    out = dqc.attention(torch.from_numpy(q).cuda(), b["kb"], b["vb"], b["table"], ok, ov, k_res=b["kres"],
                        v_res=b["vres"], q_pos=pos).cpu().numpy()
    for s, length in enumerate(lens):
        ref = R.attention_dense(q[s], b["kfull"][s], b["vfull"][s], q_pos=pos[s], k_pos=np.arange(length))
        assert _rel(out[s], ref) <= 1e-4


def test_splits_repeat_and_big_batch(rng: np.random.Generator) -> None:
    """64 ragged sequences; any split count gives the same answer; the workspace is reusable."""
    nkv, n_head, hd = 2, 8, 128
    ok = ov = _opts(4, dict(preset="paper"))
    lens = list(rng.integers(1, 128 * 6, 64))
    b = _batch(rng, lens, nkv, hd, ok, ov)
    q = torch.from_numpy(rng.standard_normal((64, n_head, hd)).astype(np.float32)).cuda()
    outs = []
    for ns in (0, 1, 3, 64):
        call = dqc.prepare_attention(q, b["kb"], b["vb"], b["table"], ok, ov, k_res=b["kres"], v_res=b["vres"],
                                     n_split=ns)
        first = call().clone()
        second = call().clone()
        assert torch.equal(first, second)
        outs.append(first.cpu().numpy()[:, 0])
    for o in outs[1:]:
        assert _rel(o, outs[0]) <= 1e-4  # other splits: other softmax frames, other fp16 roundings of p
    qn = q.cpu().numpy()
    for s in range(0, 64, 7):
        ref = R.attention_dense(qn[s][None], b["kfull"][s], b["vfull"][s])[0]
        assert _rel(outs[0][s], ref) <= 1e-3


def test_gpu_decompose_then_attention(rng: np.random.Generator) -> None:
    """The whole GPU path: decompose-on-append of a Llama-3-shaped cache, then decode."""
    nkv, n_head, hd, nb = 8, 32, 128, 10
    ok = ov = _opts(4, dict(preset="default"))
    k = kv_like(rng, nb * 128, nkv, hd)
    v = kv_like(rng, nb * 128, nkv, hd, outliers=False)
    kb = dqc.decompose(torch.from_numpy(k).cuda().view(nb, 128, nkv, hd), opts=ok)
    vb = dqc.decompose(torch.from_numpy(v).cuda().view(nb, 128, nkv, hd), opts=ov)
    cfg = core.make_config(ok, nkv, hd)
    kh = np.empty_like(k)
    vh = np.empty_like(v)
    kbn, vbn = kb.cpu().numpy(), vb.cpu().numpy()
    for i in range(nb):
        for src, dst in ((kbn, kh), (vbn, vh)):
            y = np.empty((128, nkv, hd), np.float32)
            assert lib.dq_reconstruct(cfg, ffi.from_buffer(np.ascontiguousarray(src[i])), 128,
                                      ffi.from_buffer("float[]", y)) == 0
            dst[i * 128:(i + 1) * 128] = y
    q = rng.standard_normal((1, n_head, hd)).astype(np.float32)
    out = dqc.attention(torch.from_numpy(q).cuda(), kb, vb, [list(range(nb))], ok, ov).cpu().numpy()[0]
    assert _rel(out, R.attention_dense(q, kh, vh)) <= 1e-3


def test_fast_default_preset_chunk256(rng: np.random.Generator) -> None:
    """The project's default preset (channel scales, 256-token chunks) takes the fast path."""
    ok = ov = R.options(4, "default")
    b = _batch(rng, [ok.chunk * 7 + 90], 8, 128, ok, ov, chunk=ok.chunk)
    q = rng.standard_normal((1, 32, 128)).astype(np.float32)
    call = dqc.prepare_attention(torch.from_numpy(q).cuda(), b["kb"], b["vb"], b["table"], ok, ov, k_res=b["kres"],
                                 v_res=b["vres"])
    assert call.path == "fast"
    assert _rel(call().cpu().numpy()[0, 0], R.attention_dense(q, b["kfull"][0], b["vfull"][0])[0]) <= 1e-3


@pytest.mark.parametrize("preset,chunk", [("paper", 128), ("default", 256)])
def test_int8_kernel_with_v_by_plain_loads(rng: np.random.Generator, preset: str, chunk: int) -> None:
    """Launches whose warps have 4 or more units each take V by plain loads into registers (one
    split: 62 units for the 11 warps); few units per warp keep cp.async (10 splits: 7). Both match
    the reference (their softmax frames differ, so the int8 weights round differently)."""
    ok = ov = R.options(4, preset, chunk=chunk)
    lens = [128 * 60 + 45, 128 * 47 + 3]
    b = _batch(rng, lens, 2, 128, ok, ov, chunk=chunk)
    q = torch.from_numpy(rng.standard_normal((len(lens), 8, 128)).astype(np.float32)).cuda()
    outs = []
    for n_split in (1, 10):
        call = dqc.prepare_attention(q, b["kb"], b["vb"], b["table"], ok, ov, chunk=chunk, k_res=b["kres"],
                                     v_res=b["vres"], path="fast", n_split=n_split)
        assert call.splits == n_split
        outs.append(call().cpu().numpy()[:, 0])
    qn = q.cpu().numpy()
    for s in range(len(lens)):
        ref = R.attention_dense(qn[s][None], b["kfull"][s], b["vfull"][s])[0]
        errs = [_rel(o[s], ref) for o in outs]
        assert max(errs) <= 1e-3, (s, errs)


def test_errors() -> None:
    ok = _opts(4, dict(preset="paper"))
    x = torch.zeros((1, 128, 2, 100), device="cuda")
    with pytest.raises(ValueError):
        dqc.decompose(x, opts=ok)  # head_dim not a multiple of 16
    q = torch.zeros((1, 8, 128), device="cuda")
    kb = torch.zeros((1, dqc.block_size(_opts(4, dict(scale="row")), 128, 2, 128)), dtype=torch.uint8, device="cuda")
    with pytest.raises(RuntimeError, match="unsupported"):
        dqc.attention(q, kb, kb, [[0]], _opts(4, dict(scale="row")), _opts(4, dict(scale="row")), path="fast")


def test_read_probe_reads_every_word() -> None:
    """The bench's read ceiling: the probe folds every 16-byte word it reads (so none is skipped) and
    refuses sizes and alignments it cannot read with 16-byte loads."""
    sink = torch.zeros(1, dtype=torch.int32, device="cuda")
    for n_words, marked in ((32, 0), (32, 31), (4096, 4000), (4096 + 48, 4096 + 47)):
        words = torch.zeros((n_words, 4), dtype=torch.int32)
        words[marked, 0] = 0x9E3779B9 - (1 << 32)  # the magic word, as int32
        sink.zero_()
        dqc.read_probe(words.cuda().view(torch.uint8).view(-1), 1, 32, sink)
        assert int(sink.item()) & 0xFFFFFFFF == 0x9E3779B9, (n_words, marked)
    buf = torch.zeros(64, dtype=torch.uint8, device="cuda")
    for bad in (buf[:40], buf[1:33]):  # not a multiple of 16 bytes; not 16-byte aligned
        with pytest.raises(RuntimeError, match="invalid argument"):
            dqc.read_probe(bad, 1, 32, sink)
