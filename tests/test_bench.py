"""decoquant bench on the tiny random llama: sizes, the longest context a KV budget holds (checked by
allocating it in a subprocess), and one speed run through the subprocess workers."""

from __future__ import annotations

import pytest
from _tiny_vocab import write_llama_with_vocab
from decoquant import bench


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_llama_with_vocab(tmp_path_factory.mktemp("bench") / "tiny.gguf")


def test_parse_bytes():
    assert bench.parse_bytes("2GiB") == 2 << 30
    assert bench.parse_bytes("1.5 MB") == 1_500_000
    assert bench.parse_bytes("4096") == 4096
    for bad in ("2 parsecs", "", "-1GiB", "0"):
        with pytest.raises(ValueError, match="memory size"):
            bench.parse_bytes(bad)


def test_longest_fitting():
    assert bench.longest_fitting(lambda n: 10 * n, 1000) == 100
    assert bench.longest_fitting(lambda n: 256 * -(-n // 256), 1000) == 768  # padded sizes
    assert bench.longest_fitting(lambda n: 2000, 1000) == 0


def test_max_context_allocates(tiny):
    rep = bench.max_context(tiny, "f16,dq4,dq2+chunk=64,llama:f16", "256KiB", threads=1, progress=False)
    rows = {r["kv"]: r for r in rep["results"]}
    for r in rows.values():
        assert r["verified"], r
        assert r["kv_bytes_allocated"] <= 256 << 10 < r["kv_bytes_allocated_next"]
    # 2 layers x 2 (K, V) x 32 values x 2 bytes per token; llama.cpp rounds n_ctx to 256
    assert rows["f16"]["max_context"] == (256 << 10) // 256
    assert rows["llama:f16"]["max_context"] == (256 << 10) // 256
    assert rows["dq4"]["max_context"] > 2 * rows["f16"]["max_context"]
    assert "| dq4 |" in bench.markdown(rep)


def test_speed_run(tiny):
    rep = bench.run(tiny, "dq4,llama:f16", [64, 128], decode=4, repeats=1, threads=1, progress=False)
    assert [(r["kv"], r["ctx"]) for r in rep["results"]] == [("dq4", 64), ("llama:f16", 64), ("dq4", 128),
                                                             ("llama:f16", 128)]
    for r in rep["results"]:
        assert r["prefill_tok_s"]["median"] > 0 and r["decode_tok_s"]["median"] > 0
        assert r["peak_rss"] > 0 and r["kv_bytes"] > 0
        assert "decode_vs_llama_f16" in r
    assert "| llama:f16 | 128 |" in bench.markdown(rep)
    with pytest.raises(ValueError, match="unknown KV cache"):
        bench.run(tiny, "f32", [64], progress=False)
