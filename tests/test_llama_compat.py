"""decoquant.Llama against stock llama-cpp-python on the real SmolLM2-135M-Instruct GGUF.

With kv_cache="f16" our forward pass is llama.cpp's own (bit-identical logits), and sampling, grammars,
chat templates etc. are llama-cpp-python's own code on top of our eval/sample overrides, so every
scenario below must produce exactly the same tokens as ``llama_cpp.Llama(flash_attn=True)``.
The decoquant-mode tests check that the compressed cache gives coherent text and consistent state.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from _real_model import find_model

MODEL = find_model("smollm2-135m-instruct")
pytestmark = pytest.mark.skipif(MODEL is None, reason="smollm2-135m-instruct.gguf is not in the model cache "
                                "(fetch it: decoquant models fetch smollm2-135m-instruct)")

# one thread each: the results do not depend on it, and spinning threads on a busy 2-core box are slow
COMMON = {"n_ctx": 512, "n_batch": 512, "n_threads": 1, "n_threads_batch": 1, "seed": 1234, "verbose": False}
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
FRANCE = [SYSTEM, {"role": "user", "content": "What is the capital of France?"}]
STORY = "Once upon a time, in a small village by the sea,"
# 277 tokens: longer than one 256-token DecoQuant chunk
LONG = " ".join(f"Day {i}: the fisherman sailed out at dawn, checked his nets, and came home at dusk."
                for i in range(1, 14))
MORE = " On day 14 he"


@pytest.fixture(scope="module")
def lc():
    from decoquant._llama import import_llama_cpp

    try:
        return import_llama_cpp()
    except ImportError as e:
        pytest.skip(f"llama-cpp-python on decoquant's ggml is not available: {e}")


@pytest.fixture(scope="module")
def pair(lc):
    """(stock, ours): the same model, context and seed; stock with flash attention, ours with an f16 cache."""
    from decoquant import Llama

    stock = lc.Llama(str(MODEL), flash_attn=True, **COMMON)
    ours = Llama(str(MODEL), kv_cache="f16", **COMMON)
    yield stock, ours
    ours.close()
    stock.close()


@pytest.fixture(scope="module")
def dq():
    from decoquant import Llama

    llm = Llama(str(MODEL), kv_cache="decoquant", **COMMON)
    yield llm
    llm.close()


def _strip(r: dict) -> dict:
    """A completion result without its random id, timestamp and model path."""
    return {k: v for k, v in r.items() if k not in ("id", "created", "model")}


def _tokens(llm) -> list[int]:
    return llm.input_ids[: llm.n_tokens].tolist()


def same(pair, call):
    """Run call on both; the results and every evaluated token must match. Returns ours."""
    stock, ours = pair
    a, b = call(stock), call(ours)
    if isinstance(a, dict):
        a, b = _strip(a), _strip(b)
    else:  # a stream
        a, b = [_strip(c) for c in a], [_strip(c) for c in b]
    assert b == a
    assert _tokens(ours) == _tokens(stock)
    return b


def _text(r: dict) -> str:
    return r["choices"][0]["text"]


# ---------------------------------------------------------------- the 14 scenarios, f16 vs stock


def test_greedy(pair):
    r = same(pair, lambda m: m(STORY, max_tokens=16, temperature=0.0))
    assert len(_text(r)) > 20


def test_seeded_sampling(pair):
    for seed in (1, 2):
        same(pair, lambda m, s=seed: m(STORY, max_tokens=16, temperature=0.9, top_k=50, top_p=0.9, min_p=0.02, seed=s))


def test_penalties(pair):
    same(pair, lambda m: m(STORY, max_tokens=16, temperature=0.7, seed=3, repeat_penalty=1.3,
                           frequency_penalty=0.5, presence_penalty=0.4))


def test_stop_strings(pair):
    r = same(pair, lambda m: m("List three fruits:\n1.", max_tokens=32, temperature=0.0, stop=["3."]))
    assert r["choices"][0]["finish_reason"] == "stop" and "3." not in _text(r)


def test_streaming(pair):
    chunks = same(pair, lambda m: list(m(STORY, max_tokens=16, temperature=0.8, seed=4, stream=True)))
    assert len(chunks) > 5


def test_gbnf_grammar(pair, lc):
    gbnf = r'''root ::= "The answer is " ("yes" | "no") "."'''
    r = same(pair, lambda m: m("Is water wet? ", max_tokens=16, temperature=0.8, seed=5,
                               grammar=lc.LlamaGrammar.from_string(gbnf, verbose=False)))
    assert _text(r) in ("The answer is yes.", "The answer is no.")


def test_logits_processor(pair, lc):
    def ban(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        scores = scores.copy()
        scores[::3] = -np.inf  # every third token id
        return scores

    stock, ours = pair
    n_prompt = len(stock.tokenize(STORY.encode()))
    same(pair, lambda m: m(STORY, max_tokens=12, temperature=0.0, logits_processor=lc.LogitsProcessorList([ban])))
    assert all(t % 3 for t in _tokens(ours)[n_prompt:])


def test_logit_bias(pair):
    stock = pair[0]
    dog = stock.tokenize(b" dog", add_bos=False)[0]
    r = same(pair, lambda m: m("My favourite animal is the", max_tokens=8, temperature=0.0, logit_bias={dog: 30.0}))
    assert _text(r).startswith(" dog")


@pytest.mark.parametrize("mode", [1, 2])
def test_mirostat(pair, mode):
    same(pair, lambda m: m(STORY, max_tokens=12, temperature=0.8, seed=6, mirostat_mode=mode, mirostat_tau=4.0))


def test_chat_gguf_template(pair):
    stock, ours = pair
    assert ours.chat_format == stock.chat_format == "chat_template.default"  # the template in the GGUF
    r = same(pair, lambda m: m.create_chat_completion(messages=FRANCE, max_tokens=24, temperature=0.0))
    assert "Paris" in r["choices"][0]["message"]["content"]


def test_json_object(pair):
    msgs = [SYSTEM, {"role": "user", "content": "Give a JSON object with the name and age of a person."}]
    r = same(pair, lambda m: m.create_chat_completion(messages=msgs, max_tokens=24, temperature=0.0,
                                                      response_format={"type": "json_object"}))
    content = r["choices"][0]["message"]["content"]
    if r["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(content), dict)
    else:
        assert content.lstrip().startswith("{")


def test_prefix_reuse(pair):
    _stock, ours = pair
    calls = []
    seq_rm = ours._ctx.kv_cache_seq_rm
    ours._ctx.kv_cache_seq_rm = lambda *a: calls.append(a) or seq_rm(*a)
    try:
        same(pair, lambda m: m(STORY, max_tokens=8, temperature=0.0))
        same(pair, lambda m: m(STORY + " there lived an old", max_tokens=16, temperature=0.0))
    finally:
        ours._ctx.kv_cache_seq_rm = seq_rm
    n_story = len(ours.tokenize(STORY.encode()))
    assert any(p0 >= n_story for _, p0, _ in calls)  # the second call reused the cached prefix


def test_save_load_state(pair, lc):
    stock, ours = pair
    same(pair, lambda m: m(STORY, max_tokens=4, temperature=0.0))
    states = [m.save_state() for m in pair]
    assert states[1].n_tokens == states[0].n_tokens
    same(pair, lambda m: m("Something else entirely:", max_tokens=4, temperature=0.0))
    for m, s in zip(pair, states):
        m.load_state(s)
    assert _tokens(ours) == _tokens(stock)
    # the restored cache continues the story exactly like the stock one (prefix match on the state)
    same(pair, lambda m: m(STORY + " there lived", max_tokens=8, temperature=0.7, seed=8))
    # and through LlamaRAMCache (the server's --cache)
    for m in pair:
        m.set_cache(lc.LlamaRAMCache(capacity_bytes=1 << 30))
    try:
        same(pair, lambda m: m(STORY, max_tokens=4, temperature=0.0))
        same(pair, lambda m: m("An unrelated prompt", max_tokens=2, temperature=0.0))
        same(pair, lambda m: m(STORY, max_tokens=4, temperature=0.0))  # a cache hit: load_state
    finally:
        for m in pair:
            m.set_cache(None)


def test_logprobs_logits_all(lc):
    from decoquant import Llama

    kw = {**COMMON, "n_ctx": 128, "logits_all": True}
    stock = lc.Llama(str(MODEL), flash_attn=True, **kw)
    ours = Llama(str(MODEL), kv_cache="f16", **kw)
    try:
        a, b = (m(STORY, max_tokens=4, temperature=0.0, logprobs=3, echo=True) for m in (stock, ours))
        la, lb = a["choices"][0].pop("logprobs"), b["choices"][0].pop("logprobs")
        assert _strip(b) == _strip(a)
        assert lb["tokens"] == la["tokens"] and lb["text_offset"] == la["text_offset"]
        np.testing.assert_allclose(np.array(lb["token_logprobs"][1:]), np.array(la["token_logprobs"][1:]),
                                   atol=1e-5)
        assert [sorted(d) for d in lb["top_logprobs"][1:]] == [sorted(d) for d in la["top_logprobs"][1:]]
        n = stock.n_tokens
        np.testing.assert_array_equal(ours.scores[:n], stock.scores[:n])
    finally:
        ours.close()
        stock.close()


# ---------------------------------------------------------------- the DecoQuant cache


def test_decoquant_chat(dq):
    r = dq.create_chat_completion(messages=FRANCE, max_tokens=32, temperature=0.0)
    print("decoquant SmolLM2:", r["choices"][0]["message"]["content"])
    assert "Paris" in r["choices"][0]["message"]["content"]
    assert dq.engine.kv_cache == "decoquant"


def test_decoquant_prefix_reuse_and_state_equal_fresh(dq):
    dq.reset()
    dq(LONG, max_tokens=1, temperature=0.0)  # > 256 tokens: one compressed chunk, the rest in fp16
    state = dq.save_state()
    assert dq.engine.n_past == state.n_tokens > 256
    reused = _text(dq(LONG + MORE, max_tokens=12, temperature=0.0))  # generate() truncates and extends
    dq("Something else.", max_tokens=2, temperature=0.0)
    dq.load_state(state)
    assert dq.n_tokens == dq.engine.n_past == state.n_tokens
    restored = _text(dq(LONG + MORE, max_tokens=12, temperature=0.0))
    dq.reset()
    fresh = _text(dq(LONG + MORE, max_tokens=12, temperature=0.0))
    print("decoquant SmolLM2 continuation:", repr(fresh))
    assert reused == restored == fresh
    # the state holds the compressed cache: under half of the f16 cache of the same tokens
    e = dq.engine
    f16_bytes = state.n_tokens * e.n_layer * 2 * e.n_head_kv * e.head_dim * 2
    assert state.llama_state_size < 0.5 * f16_bytes


def test_decoquant_state_from_other_cache_type_is_refused(dq, pair):
    from decoquant import EngineError

    ours = pair[1]
    ours(STORY, max_tokens=2, temperature=0.0)
    with pytest.raises(EngineError):
        dq.load_state(ours.save_state())


def test_n_ctx_zero_is_the_gguf_context_length():
    from decoquant import Llama

    llm = Llama(str(MODEL), n_ctx=0, n_threads=1, verbose=False)
    try:
        arch = llm.metadata["general.architecture"]
        assert llm.n_ctx() == llm.engine.n_ctx == int(llm.metadata[f"{arch}.context_length"]) > 512
    finally:
        llm.close()


@pytest.mark.parametrize("kwargs,match", [
    ({"kv_cache": "q4_0"}, r"kv_cache must be one of \('decoquant', 'f16'\)"),
    ({"kv_bits_k": 5}, r"kv_bits_k must be one of \(2, 3, 4, 8\)"),
    ({"kv_bits_v": 1}, r"kv_bits_v must be one of \(2, 3, 4, 8\)"),
    ({"kv_preset": "fast"}, r"preset must be one of \['default', 'paper'\]"),
    ({"kv_bits": 4}, r"unknown KV option\(s\) \['kv_bits'\]; valid: .*kv_bits_k"),
    ({"scale": "block"}, r"scale must be one of \('token', 'row', 'channel'\)"),
    ({"gauge": 2.0}, r"gauge must be in \[0, 1\]"),
    ({"attn": "flash"}, r"attn must be 'dq'.* or 'ggml'"),
    ({"type_k": 8}, r"type_k selects llama.cpp's KV cache type; use kv_cache"),
    ({"n_ctx": -1}, r"n_ctx must be an int >= 0"),
])
def test_bad_kwargs(kwargs, match):
    from decoquant import Llama

    with pytest.raises(ValueError, match=match):
        Llama(str(MODEL), verbose=False, **kwargs)


def test_missing_model_path():
    from decoquant import Llama

    with pytest.raises(ValueError, match="Model path does not exist"):
        Llama("/nonexistent/model.gguf", verbose=False)


def test_from_registry():
    from decoquant import Llama

    try:
        from decoquant import registry  # noqa: F401
    except ImportError:
        pytest.skip("decoquant.registry is not there yet")
    llm = Llama.from_registry("smollm2-135m-instruct", n_ctx=256, n_threads=1, verbose=False)
    try:
        assert llm.model_path == str(MODEL)
        assert llm.engine.kv_cache == "decoquant"
    finally:
        llm.close()
