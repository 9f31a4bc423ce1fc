"""The command line's inputs: UTF-8 text from files or stdin, and documents from files or JSON lines."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence


class UsageError(Exception):
    """Bad command-line input: exit code 2."""


def read_text(path: str) -> str:
    """A UTF-8 file, or stdin for '-'; anything else is a usage error naming the file."""
    name = "stdin" if path == "-" else path
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as error:
        raise UsageError(f"{name}: cannot read: {error.strerror or error}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(f"{name}: not valid UTF-8 (byte {error.start})") from None


def read_documents(docs: Sequence[str], jsonl: str | None) -> list[dict]:
    """Documents from --doc files (titled by file name) and/or a --docs-jsonl file of {"title", "text"} lines."""
    if sum(path == "-" for path in [*docs, jsonl]) > 1:
        raise UsageError("stdin ('-') can be read only once")
    documents = [{"title": "" if path == "-" else Path(path).stem, "text": read_text(path)} for path in docs]
    if jsonl is not None:
        name = "stdin" if jsonl == "-" else jsonl
        for number, line in enumerate(read_text(jsonl).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise UsageError(f"{name}:{number}: not JSON: {error.msg}") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not isinstance(row.get("title", ""), str):
                raise UsageError(f'{name}:{number}: expected an object with a "text" string (and an optional "title")')
            documents.append({"title": row.get("title", ""), "text": row["text"]})
    if not documents:
        raise UsageError("no documents: give --doc FILE (repeatable) or --docs-jsonl FILE")
    return documents
