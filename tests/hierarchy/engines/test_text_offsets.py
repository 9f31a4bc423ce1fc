"""Token spans from byte pieces: exact pieces, a tokenizer's leading space, unknown byte tokens, normalised text."""
from __future__ import annotations

from longshap.hierarchy.engines.text_offsets import piece_offsets


def test_pieces_that_join_up_to_the_text():
    assert piece_offsets("Paris is", [b"Par", b"is", b" is"]) == [(0, 3), (3, 5), (5, 8)]


def test_a_leading_space_added_to_the_first_word():
    assert piece_offsets("Hello world", [b" Hello", b" world"]) == [(0, 5), (5, 11)]


def test_byte_tokens_of_one_character_span_that_character():
    text = "é!"
    assert piece_offsets(text, [b"\xc3", b"\xa9", b"!"]) == [(0, 1), (0, 1), (1, 2)]


def test_unknown_pieces_get_the_bytes_between_their_neighbours():
    text = "Café au"
    assert piece_offsets(text, [b"Caf", b"", b"", b" au"]) == [(0, 3), (3, 4), (3, 4), (4, 7)]
    assert piece_offsets(text, [b"Caf", b"", b""]) == [(0, 3), (3, 4), (4, 7)], "the last ones share the rest of the text"


def test_a_piece_the_text_lacks_gets_an_empty_span_and_the_rest_still_align():
    assert piece_offsets("a b", [b"a", b"\xe2\x96\x81", b" b"]) == [(0, 1), (1, 1), (1, 3)]
