"""TextStreamer: stop strings cut exactly where the first one completes, in linear time (issue 16 item 2)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2kit.errors import GPT2KitError
from gpt2kit.streaming import MAX_STOP_CHARS, MAX_STOP_STRINGS, TextStreamer, check_stop_limits


class PieceTokenizer:
    """Token i is the text pieces[i]: the streamer sees exactly the splits a test chooses."""

    eot_token = None

    def __init__(self, pieces: list[str]):
        self.pieces = pieces

    def stream_bytes(self, prev, token: int) -> bytes:
        return self.pieces[token].encode()


def run(pieces: list[str], stop) -> tuple[str, TextStreamer, list[str]]:
    s = TextStreamer(PieceTokenizer(pieces), stop)
    out = []
    for t in range(len(pieces)):
        out.append(s.push(t))
        if s.stopped:
            break
    out.append(s.flush())
    return "".join(out), s, out


def reference(text: str, stop: list[str]) -> str:
    """Cut at the first position where a stop string ends; among those ending there, the longest."""
    for end in range(1, len(text) + 1):
        done = [s for s in stop if text[:end].endswith(s)]
        if done:
            return text[: end - max(map(len, done))]
    return text


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text("abé", min_size=0, max_size=4), max_size=12),
       st.lists(st.text("abé", min_size=1, max_size=5), max_size=4))
def test_matches_a_plain_scan_for_any_split(pieces, stop):
    got, _, _ = run(pieces, stop)
    assert got == reference("".join(pieces), stop)


def test_holds_back_a_possible_stop_and_releases_it_once_ruled_out():
    _, s, out = run(["Hel", "lo wo", "rx", " end"], ["lo world"])
    assert out == ["He", "l", "lo worx", " end", ""]
    _, s, out = run(["ab", "ab", "c"], ["abc", "babc"])  # both end at 'c': the longer one cuts
    assert out == ["", "a", "", ""] and s.stopped


def test_work_per_character_does_not_grow_with_stop_length():
    """A 250,000-character stop set (4 x 62,500) costs the same bounded number of matcher steps per
    character as a short one: at most 2 per character per stop string (the old check sliced every
    prefix of every stop string on every token: ~250,000 string comparisons per token)."""
    pieces = ["é" * (i % 3 + 1) for i in range(900)] + ["x", "y" * 50]
    chars = sum(map(len, pieces))
    for stop in (["éé!", "zz", "q", "xyz"], ["é" * 62_500] * 4):
        text, s, out = run(pieces, stop)
        assert text == "".join(pieces) and not s.stopped
        assert s.steps <= 2 * chars * len(stop)
    assert out[-3:] == ["é" * 1800 + "x", "y" * 50, ""] and out[:-3] == [""] * 900  # held while it could still become the stop


def test_no_stop_strings_pass_text_straight_through():
    _, s, out = run(["a", "é", "b"], [])
    assert out == ["a", "é", "b", ""] and s.steps == 0


def test_server_limits():
    check_stop_limits(["x" * MAX_STOP_CHARS] * MAX_STOP_STRINGS)
    with pytest.raises(GPT2KitError, match=f"at most {MAX_STOP_STRINGS}"):
        check_stop_limits(["x"] * (MAX_STOP_STRINGS + 1))
    with pytest.raises(GPT2KitError, match=f"at most {MAX_STOP_CHARS} are allowed"):
        check_stop_limits(["é" * 250_000] * 4)
    with pytest.raises(GPT2KitError, match="non-empty"):
        TextStreamer(PieceTokenizer([]), [""])


def test_cli_refuses_an_empty_stop_string_before_any_output(tiny_checkpoint):
    from conftest import assert_one_line_error, cli_in_process

    for backend in ("torch", "numpy"):
        r = cli_in_process("generate", "hi", "--model", tiny_checkpoint, "--max-new-tokens", "3", "--backend", backend, "--stop", "")
        assert_one_line_error(r, "stop strings must be non-empty strings")
        assert r.stdout == ""
