"""python -m decoquant.server (llama_cpp.server on decoquant.Llama) answers /v1/chat/completions on loopback."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from _real_model import find_model

MODEL = find_model("smollm2-135m-instruct")
DEPS = ("fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings")
MISSING = [m for m in DEPS if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.skipif(MODEL is None, reason="smollm2-135m-instruct.gguf is not in the model cache "
                       "(fetch it: decoquant models fetch smollm2-135m-instruct)"),
    pytest.mark.skipif(bool(MISSING), reason=f"llama_cpp.server needs {MISSING}: "
                       'pip install "llama-cpp-python[server]==0.3.36"'),
]
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    cmd = [sys.executable, "-m", "decoquant.server", "--model", str(MODEL), "--kv-cache", "decoquant",
           "--n_ctx", "512", "--n_threads", "1", "--n_threads_batch", "1", "--verbose", "true",
           "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{Path(log).read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer in 120 s:\n{Path(log).read_text()[-3000:]}")
            time.sleep(0.3)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _post(url: str, body: dict) -> urllib.request.Request:
    return urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                  headers={"Content-Type": "application/json"})


def test_chat_completions(server: tuple[str, Path]) -> None:
    url, log = server
    body = {"messages": MESSAGES, "temperature": 0, "max_tokens": 32}
    with urllib.request.urlopen(_post(url, body), timeout=120) as r:
        plain = json.load(r)
    content = plain["choices"][0]["message"]["content"]
    assert plain["object"] == "chat.completion" and plain["usage"]["completion_tokens"] > 0
    assert "Paris" in content

    chunks = []
    with urllib.request.urlopen(_post(url, {**body, "stream": True}), timeout=120) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                break
            chunks.append(json.loads(line[len("data: "):]))
    assert len(chunks) > 3 and all(c["object"] == "chat.completion.chunk" for c in chunks)
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert streamed == content  # greedy: the same answer, token by token
    # and it was our class that served them (verbose: decoquant.Llama reports its cache)
    assert "decoquant.Llama: kv_cache=decoquant, K 4 / V 4 bits" in log.read_text()
