"""Character spans of tokens from their byte pieces, for tokenizers that give ids but no offsets (llama.cpp, servers).

A token's piece is the bytes it adds to the text. Where the pieces join up to the
text (perhaps after a leading space the tokenizer adds), spans follow from the
running byte count; a token covering part of a multi-byte character spans that
whole character. Where they do not (a tokenizer that normalises the text), each
piece is looked for from where the last one ended, and one that is not found gets
an empty span there.
"""
from __future__ import annotations

from typing import Sequence


def piece_offsets(text: str, pieces: Sequence[bytes]) -> list[tuple[int, int]]:
    """(start, end) character offsets in `text` of each piece."""
    data = text.encode("utf-8")
    char_of_byte = _char_of_byte(text)
    joined = b"".join(pieces)
    shift = 0
    if joined != data and joined == b" " + data:
        shift = 1  # a leading space the tokenizer added before the first word
    elif joined != data:
        return _searched(text, pieces)
    spans, position = [], -shift
    for piece in pieces:
        start, end = max(0, position), max(0, position + len(piece))
        position += len(piece)
        if end <= start:
            spans.append((char_of_byte[start], char_of_byte[start]))
        else:
            spans.append((char_of_byte[start], char_of_byte[end - 1] + 1))
    return spans


def _char_of_byte(text: str) -> list[int]:
    """For each UTF-8 byte of `text` (and one past the end), the index of the character it belongs to."""
    owners: list[int] = []
    for index, char in enumerate(text):
        owners.extend([index] * len(char.encode("utf-8")))
    owners.append(len(text))
    return owners


def _searched(text: str, pieces: Sequence[bytes]) -> list[tuple[int, int]]:
    spans, cursor = [], 0
    for piece in pieces:
        word = piece.decode("utf-8", "replace").strip()
        found = text.find(word, cursor) if word else -1
        if found < 0:
            spans.append((cursor, cursor))
            continue
        spans.append((found, found + len(word)))
        cursor = found + len(word)
    return spans
