"""Character spans of tokens from their byte pieces, for tokenizers that give ids but no offsets (llama.cpp, servers).

A token's piece is the bytes it adds to the text. Pieces are placed in order: each
where the text continues (or, past bytes the text has and the pieces do not, where
it next occurs). A piece may be unknown (empty): a server cannot send the text of a
token that is part of a UTF-8 character. The bytes skipped before the next known
piece are shared out among the unknown ones before it, so byte tokens get the bytes
they stand for. A leading space the tokenizer adds to the first word is tolerated.
A token covering part of a multi-byte character spans that whole character.
"""
from __future__ import annotations

from typing import Sequence


def piece_offsets(text: str, pieces: Sequence[bytes]) -> list[tuple[int, int]]:
    """(start, end) character offsets in `text` of each piece."""
    data = text.encode("utf-8")
    spans: list[tuple[int, int]] = []
    waiting: list[int] = []
    cursor = 0
    for piece in pieces:
        if not piece:
            waiting.append(len(spans))
            spans.append((cursor, cursor))
            continue
        start, length = _place(data, piece, cursor)
        if start < 0:
            spans.append((cursor, cursor))
            continue
        _share(spans, waiting, cursor, start)
        waiting = []
        spans.append((start, start + length))
        cursor = start + length
    _share(spans, waiting, cursor, len(data))
    owner = _char_of_byte(text)
    return [(owner[s], owner[s]) if e <= s else (owner[s], owner[e - 1] + 1) for s, e in spans]


def _place(data: bytes, piece: bytes, cursor: int) -> tuple[int, int]:
    """Where `piece` goes from `cursor` on, and how many bytes it covers there; (-1, 0) if nowhere."""
    bare = piece[1:] if piece.startswith(b" ") else b""
    if data.startswith(piece, cursor):
        return cursor, len(piece)
    if bare and data.startswith(bare, cursor):
        return cursor, len(bare)
    found = data.find(piece, cursor)
    if found >= 0:
        return found, len(piece)
    found = data.find(bare, cursor) if bare else -1
    return (found, len(bare)) if found >= 0 else (-1, 0)


def _share(spans: list[tuple[int, int]], waiting: list[int], start: int, end: int) -> None:
    """Give the bytes start..end to the unknown pieces `waiting` (indexes into `spans`), in order, as evenly as they go."""
    count = len(waiting)
    for rank, index in enumerate(waiting):
        spans[index] = (start + (end - start) * rank // count, start + (end - start) * (rank + 1) // count)


def _char_of_byte(text: str) -> list[int]:
    """For each UTF-8 byte of `text` (and one past the end), the index of the character it belongs to."""
    owners: list[int] = []
    for index, char in enumerate(text):
        owners.extend([index] * len(char.encode("utf-8")))
    owners.append(len(text))
    return owners
