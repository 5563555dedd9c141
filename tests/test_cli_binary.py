"""The compiled `decoquant-cli` (ggml_ext/cli): answers on SmolLM2, matches the Python runtime token
for token with an f16 cache, and fails cleanly on bad input.

The binary is `$DECOQUANT_CLI` if set (e.g. a dev build), else the `decoquant-cli` console script
that pip installs next to sys.executable, else the one on PATH."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from decoquant import registry
from decoquant._llama import import_llama_cpp
from decoquant.chat import DEFAULT_SYSTEM
from decoquant.engine import Engine

MODEL = "smollm2-135m-instruct"


def _find_cli() -> str | None:
    env = os.environ.get("DECOQUANT_CLI")
    if env:
        return env
    here = Path(sys.executable).parent / "decoquant-cli"  # this environment's, before any other on PATH
    return str(here) if here.exists() else shutil.which("decoquant-cli")


CLI = _find_cli()
pytestmark = pytest.mark.skipif(CLI is None, reason="decoquant-cli is not installed (pip install . puts it on PATH)")


@pytest.fixture(scope="module")
def model() -> Path:
    path = registry.model_path(MODEL)
    if not path.is_file():
        pytest.skip(f"{MODEL} is not cached ({path}); decoquant models fetch {MODEL}")
    return path


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert CLI is not None
    return subprocess.run([CLI, *args], check=False, capture_output=True, text=True, timeout=300, input=stdin,
                          env={**os.environ, **(env or {})})


def test_answers_paris_with_the_default_model(model: Path) -> None:
    # no -m: the registry cache's default model; 4-bit DecoQuant cache (the default)
    r = run("-p", "What is the capital of France?", "-n", "32", "--temp", "0", "-t", "1",
            env={"DECOQUANT_CACHE": str(model.parent.parent)})
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert re.search(r"decode: +\d+ tokens in .* tokens/s", r.stderr)
    per_token = float(re.search(r"KV cache \(decoquant K4/V4\): ([\d.]+) bytes/token", r.stderr).group(1))
    assert 0 < per_token < 23040 / 2  # SmolLM2's f16 cache: 30 layers x 2 x 3 x 64 x 2 bytes


def test_f16_greedy_matches_the_python_runtime(model: Path) -> None:
    prompt, n = "Tell me a story about a dragon.", 16
    r = run("-m", str(model), "-p", prompt, "-n", str(n), "--temp", "0", "-t", "1", "-c", "256",
            "--kv-cache", "f16", "--verbose-prompt")
    assert r.returncode == 0, r.stderr
    ids = [int(t) for t in re.search(r"prompt: \d+ tokens:([\d ]+)\n", r.stderr).group(1).split()]

    # the same single chat turn through llama-cpp-python's bindings of the same libllama
    llama_cpp = import_llama_cpp()
    llm = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
    tmpl = llm.metadata["tokenizer.chat_template"].encode()
    msg = (llama_cpp.llama_chat_message * 2)(llama_cpp.llama_chat_message(b"system", DEFAULT_SYSTEM.encode()),
                                              llama_cpp.llama_chat_message(b"user", prompt.encode()))
    buf = ctypes.create_string_buffer(4096)
    k = llama_cpp.llama_chat_apply_template(tmpl, msg, 2, True, buf, len(buf))
    text = buf.raw[:k]
    assert b"<|im_start|>user\n" + prompt.encode() in text
    assert ids == llm.tokenize(text, add_bos=True, special=True)

    # greedy decoding on decoquant.Engine (f16: llama.cpp's attention, bit-identical logits)
    out: list[int] = []
    with Engine(model, n_ctx=256, n_threads=1, kv_cache="f16") as eng:
        logits = eng.eval(ids)
        while len(out) < n:
            tok = int(np.argmax(logits))
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok):
                break
            out.append(tok)
            logits = eng.eval([tok])
    assert len(out) == n  # a long answer: the comparison covers all n tokens
    assert r.stdout == llm.detokenize(out).decode() + "\n"


def test_chat_reuses_the_cached_prefix(model: Path) -> None:
    # two turns on stdin: the second turn's prompt extends the first, so only its new tokens are prefilled
    r = run("-m", str(model), "-cnv", "-n", "24", "--temp", "0", "-t", "1", "-c", "512", "--kv-cache", "f16",
            "--verbose-prompt", stdin="What is the capital of France?\nAnd of Germany?\n")
    assert r.returncode == 0, r.stderr
    answers = r.stdout.splitlines()
    assert len(answers) == 2 and "Paris" in answers[0]
    lens = [int(n) for n in re.findall(r"prompt: (\d+) tokens:", r.stderr)]
    prefill = int(re.search(r"prefill: +(\d+) tokens", r.stderr).group(1))
    assert len(lens) == 2 and lens[1] > lens[0]
    assert prefill <= lens[1]  # lens[0] + the new tokens only


def test_bad_arguments_fail_cleanly(tmp_path: Path) -> None:
    cases = [
        (["--bogus"], "unknown argument '--bogus'"),
        (["-n", "ten"], "-n expects an integer"),
        (["--kv-bits-k", "5"], "must be 2, 3, 4 or 8"),
        (["--kv-cache", "q8_0"], "'decoquant' or 'f16'"),
    ]
    for args, msg in cases:
        r = run(*args)
        assert r.returncode == 2 and msg in r.stderr, (args, r.returncode, r.stderr)
    r = run("-m", str(tmp_path / "missing.gguf"), "-p", "hi")
    assert r.returncode == 1 and "model file not found" in r.stderr
    # no model and an empty cache: how to fetch the default
    r = run("-p", "hi", env={"DECOQUANT_CACHE": str(tmp_path)})
    assert r.returncode == 1 and f"decoquant models fetch {MODEL}" in r.stderr
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + bytes(60))
    r = run("-m", str(junk), "-p", "hi")
    assert r.returncode == 1 and "cannot load the model" in r.stderr


def test_context_overflow_fails_cleanly(model: Path) -> None:
    prompt = "What is the capital of France?"  # 27 tokens with the template and the default system message
    r = run("-m", str(model), "-c", "8", "-p", prompt)
    assert r.returncode == 1 and "more than the context size n_ctx = 8" in r.stderr
    r = run("-m", str(model), "-c", "32", "-n", "64", "--temp", "0", "-t", "1", "-p", prompt)
    assert r.returncode == 1 and "the context is full (n_ctx = 32 tokens)" in r.stderr
