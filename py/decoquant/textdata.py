"""Evaluation text: a file, or one of its documents (blank-line separated, e.g. one address of sotu.txt)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def documents(text: str) -> list[str]:
    """Non-empty blocks of text separated by blank lines."""
    docs, cur = [], []
    for line in text.splitlines():
        if line.strip():
            cur.append(line)
        elif cur:
            docs.append("\n".join(cur))
            cur = []
    if cur:
        docs.append("\n".join(cur))
    return docs


def load(path: str | os.PathLike, doc: str | int | None = None) -> tuple[str, dict[str, Any]]:
    """The text to evaluate and a description of it: the whole file, or doc ("longest" or an index)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"text file {str(p)!r} does not exist")
    text = p.read_text(encoding="utf-8", errors="replace")
    info: dict[str, Any] = {"path": str(p), "chars": len(text), "doc": None}
    if doc is None or doc == "":
        return text, info
    docs = documents(text)
    if not docs:
        raise ValueError(f"{p} has no text")
    if str(doc) == "longest":
        i = max(range(len(docs)), key=lambda j: len(docs[j]))
    else:
        try:
            i = int(doc)
        except ValueError:
            raise ValueError(f"doc must be 'longest' or a document index, got {doc!r}") from None
        if not 0 <= i < len(docs):
            raise ValueError(f"doc {i} out of range: {p} has {len(docs)} documents (blank-line separated)")
    info.update(doc=i, n_docs=len(docs), doc_chars=len(docs[i]), doc_start=docs[i][:60])
    return docs[i], info


def first_tokens(model: Any, text: str, n: int) -> list[int]:
    """The first n tokens of text (tokenizing a growing prefix, not the whole file)."""
    n_chars = 8 * n + 64
    while True:
        toks = model.tokenize(text[:n_chars])
        if len(toks) >= n + 16 or n_chars >= len(text):
            break
        n_chars *= 2
    if len(toks) < n:
        raise ValueError(f"the text has only {len(toks)} tokens; {n} are needed (lower --ctx or --chunks)")
    return toks[:n]
