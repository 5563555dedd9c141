"""`decoquant chat` (a REPL, or one shot with -p) and `decoquant generate` (raw completion), on decoquant.Llama."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any

from .cli import add_kv_args, add_model_args, open_llama

# our choice, shared with decoquant-cli: with SmolLM2's own default system prompt ("...named SmolLM...")
# greedy answers drift (stock llama-cpp-python answers the same); a plain assistant prompt keeps them on topic
DEFAULT_SYSTEM = "You are a helpful assistant."
_HELP = "/reset: forget the conversation   /stats: tokens, KV cache, speed   /exit (or Ctrl-D): quit"


def add_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("chat", help="chat with a model (the default model if none is given)",
                       description=f"Chat with a GGUF model, with its chat template. In the REPL: {_HELP}")
    c.add_argument("-p", "--prompt", help="one message: print the answer and exit")
    c.add_argument("--system", default=DEFAULT_SYSTEM, metavar="TEXT",
                   help=f"system message; default {DEFAULT_SYSTEM!r} (as decoquant-cli); '' for none (the chat "
                        "template's own default, if it has one)")
    c.add_argument("--max-tokens", type=int, default=512, metavar="N", help="most tokens per answer; default 512")
    _sampling_args(c, temp=0.7)
    c.add_argument("--chat-format", default=None, help="a llama-cpp-python chat format instead of the GGUF's "
                   "template (e.g. chatml)")
    c.add_argument("--stats", action="store_true", help="with -p: print the stats to stderr at the end")
    add_model_args(c)
    add_kv_args(c)
    c.set_defaults(fn=_chat)

    g = sub.add_parser("generate", help="raw text completion of a prompt (no chat template)")
    g.add_argument("-p", "--prompt", required=True)
    g.add_argument("-n", "--n-predict", type=int, default=128, metavar="N", help="tokens to generate; default 128")
    _sampling_args(g, temp=0.8)
    g.add_argument("--no-echo", action="store_true", help="print only the completion, not the prompt")
    g.add_argument("--stats", action="store_true", help="print the stats to stderr at the end")
    add_model_args(g)
    add_kv_args(g)
    g.set_defaults(fn=_generate)


def _sampling_args(p: argparse.ArgumentParser, temp: float) -> None:
    p.add_argument("--temp", type=float, default=temp, help=f"temperature (0: greedy); default {temp}")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("-v", "--verbose", action="store_true", help="llama.cpp's logs")


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    if args.temp < 0:
        raise ValueError(f"--temp must be >= 0, got {args.temp}")
    return {"temperature": args.temp, "top_k": args.top_k, "top_p": args.top_p, "repeat_penalty": args.repeat_penalty}


class Meter:
    """Token counts and timings of one generation, from a logits processor (called once per sampled token,
    with the ids evaluated so far: the first call sees the whole prompt)."""

    def __init__(self) -> None:
        self.n_prompt = self.n_gen = 0
        self.t0 = self.t_first = self.t_last = 0.0

    def start(self) -> list[Any]:
        """Reset, and the logits_processor list to pass to the completion call."""
        self.n_prompt = self.n_gen = 0
        self.t0 = self.t_first = self.t_last = time.perf_counter()
        return [self]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        now = time.perf_counter()
        if self.n_gen == 0:
            self.n_prompt, self.t_first = len(input_ids), now
        self.n_gen += 1
        self.t_last = now
        return scores

    def line(self) -> str:
        prefill = self.t_first - self.t0
        decode = self.t_last - self.t_first
        speed = f"{(self.n_gen - 1) / decode:.1f} tok/s" if decode > 0 else "n/a"
        return (f"prompt {self.n_prompt} tokens in {prefill:.2f} s, generated {self.n_gen} tokens at {speed}")


def kv_line(llm: Any, args: argparse.Namespace) -> str:
    e = llm.engine
    what = "f16" if args.kv_cache == "f16" else f"DecoQuant K{args.kv_bits_k}/V{args.kv_bits_v} bits"
    # the cache is allocated for n_ctx up front
    return (f"KV cache {what}: {llm.n_tokens}/{llm.n_ctx()} tokens, {e.kv_bytes / 2**20:.1f} MiB "
            f"({e.kv_bytes} bytes, {e.kv_bytes_per_token:.0f} per token of n_ctx)")


def _stream(chunks: Any, key: str) -> str:
    out = []
    for ch in chunks:
        c = ch["choices"][0]
        text = c["delta"].get("content") if key == "delta" else c.get("text")
        if text:
            out.append(text)
            print(text, end="", flush=True)
    return "".join(out)


def _chat(args: argparse.Namespace) -> int:
    if args.max_tokens < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    sampling = _sampling(args)
    llm = open_llama(args, chat_format=args.chat_format)
    if not llm.metadata.get("tokenizer.chat_template") and args.chat_format is None:
        print("decoquant: note: the model has no chat template (a base model?): using llama-cpp-python's "
              f"{llm.chat_format!r} format; `decoquant generate` may suit it better", file=sys.stderr)
    system = [{"role": "system", "content": args.system}] if args.system else []
    meter = Meter()

    def answer(messages: list[dict[str, str]]) -> str:
        chunks = llm.create_chat_completion(messages=messages, stream=True, max_tokens=args.max_tokens,
                                            logits_processor=meter.start(), **sampling)
        return _stream(chunks, "delta")

    if args.prompt is not None:
        answer([*system, {"role": "user", "content": args.prompt}])
        print()
        if args.stats:
            print(f"{meter.line()}\n{kv_line(llm, args)}", file=sys.stderr)
        return 0

    print(f"decoquant chat: {llm.model_path}\n{_HELP}", file=sys.stderr)
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    history = list(system)
    turns = 0
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            return 0
        cmd = line.strip()
        if not cmd:
            continue
        if cmd in ("/exit", "/quit"):
            return 0
        if cmd == "/help":
            print(_HELP)
            continue
        if cmd == "/reset":
            history, turns = list(system), 0
            llm.reset()
            print("(conversation cleared)")
            continue
        if cmd == "/stats":
            last = meter.line() if meter.n_gen else "none yet"
            print(f"turns: {turns}   last answer: {last}\n{kv_line(llm, args)}")
            continue
        history.append({"role": "user", "content": line})
        try:
            text = answer(history)
        except KeyboardInterrupt:  # stop this answer, keep the conversation
            text = ""
            print(" [interrupted]", end="")
        except ValueError as e:  # e.g. the context is full
            history.pop()
            print(f"decoquant: error: {e} (/reset starts over)", file=sys.stderr)
            continue
        print()
        history.append({"role": "assistant", "content": text})
        turns += 1


def _generate(args: argparse.Namespace) -> int:
    if args.n_predict < 1:
        raise ValueError(f"-n must be >= 1, got {args.n_predict}")
    sampling = _sampling(args)
    llm = open_llama(args)
    meter = Meter()
    if not args.no_echo:
        print(args.prompt, end="", flush=True)
    chunks = llm.create_completion(args.prompt, max_tokens=args.n_predict, stream=True,
                                   logits_processor=meter.start(), **sampling)
    _stream(chunks, "text")
    print()
    if args.stats:
        print(f"{meter.line()}\n{kv_line(llm, args)}", file=sys.stderr)
    return 0
