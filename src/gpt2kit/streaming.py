"""Token ids -> streamed text: whole UTF-8 characters only, cut at the first stop string.

Torch-free on purpose: both the torch engine (generation.py) and numpy_gpt2 stream through it.

Stop matching is Knuth-Morris-Pratt per stop string: each new character advances every
string's match state, so the work per token is O(new characters x stop strings), amortized,
whatever the stop strings' length (the failure tables are built once, O(total length)). The
text held back is exactly the longest match in progress, kept in a deque and released from
its front, so holding it costs nothing per token either. Servers should still cap stop
strings (see MAX_STOP_STRINGS, MAX_STOP_CHARS): the tables and the request body grow with them.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence

from .errors import GPT2KitError
from .tokenization.base import StreamDecoder, Tokenizer

MAX_STOP_STRINGS = 16  # what the server accepts per request
MAX_STOP_CHARS = 4096  # characters per stop string, at the server


def check_stop_limits(stop: Sequence[str]) -> None:
    """The server's caps: at most MAX_STOP_STRINGS strings of at most MAX_STOP_CHARS characters."""
    if len(stop) > MAX_STOP_STRINGS:
        raise GPT2KitError(f"stop holds {len(stop)} strings; at most {MAX_STOP_STRINGS} are allowed")
    longest = max((len(s) for s in stop), default=0)
    if longest > MAX_STOP_CHARS:
        raise GPT2KitError(f"a stop string has {longest} characters; at most {MAX_STOP_CHARS} are allowed")


class StopStrings:
    """Stop strings with their KMP failure tables; built once per request and shared by its rows."""

    def __init__(self, stop: Sequence[str] = ()):
        if any(not isinstance(s, str) or not s for s in stop):
            raise GPT2KitError("stop strings must be non-empty strings")
        self.strings = tuple(stop)
        self.fail = [_failure(s) for s in self.strings]


def _failure(s: str) -> list[int]:
    """fail[i]: length of the longest proper prefix of s[:i + 1] that is also its suffix."""
    fail, k = [0] * len(s), 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = fail[k - 1]
        if s[i] == s[k]:
            k += 1
        fail[i] = k
    return fail


class TextStreamer:
    """Turns ids into text pieces: whole UTF-8 characters only, cut where a stop string first completes.

    Text that might be the start of a stop string is held back until it is ruled out. When stop
    strings complete at the same character, the longest wins (the cut is at its start).
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] | StopStrings = (), prev: int | None = None):
        self.decoder = StreamDecoder(tokenizer, prev)  # prev: the prompt's last token (bert spaces words)
        self.stops = stop if isinstance(stop, StopStrings) else StopStrings(stop)
        self.state = [0] * len(self.stops.strings)  # characters of each stop string matched so far
        self.held: deque[str] = deque()  # the tail that may start a stop string: max(state) characters
        self.stopped = False
        self.steps = 0  # matcher steps taken: at most 2 per character per stop string (tests count them)

    def push(self, token: int) -> str:
        return self._emit(self.decoder.push(token), final=False)

    def flush(self) -> str:
        return "" if self.stopped else self._emit(self.decoder.flush(), final=True)

    def _emit(self, text: str, final: bool) -> str:
        if not self.stops.strings:
            return text
        for c in text:
            self.held.append(c)
            matched = self._advance(c)
            if matched:
                self.stopped = True
                out = self._release(len(self.held) - matched)
                self.held.clear()
                return out
        return self._release(len(self.held) - (0 if final else max(self.state)))

    def _advance(self, c: str) -> int:
        """Feed one character to every stop string; the length of the longest one it completes, or 0."""
        matched = 0
        for i, (s, fail) in enumerate(zip(self.stops.strings, self.stops.fail)):
            q = self.state[i]
            while q and s[q] != c:
                q = fail[q - 1]
                self.steps += 1
            self.steps += 1
            if s[q] == c:
                q += 1
                if q == len(s):
                    matched, q = max(matched, q), fail[q - 1]
            self.state[i] = q
        return matched

    def _release(self, n: int) -> str:
        return "".join(self.held.popleft() for _ in range(n))


def stream_text(tokens: Iterable[int], tokenizer: Tokenizer, stop: Sequence[str] | StopStrings = (), prev: int | None = None) -> Iterator[str]:
    """Text pieces for a stream of new ids; ends at the end-of-text id, a stop string or the ids' end."""
    eot = tokenizer.eot_token
    streamer = TextStreamer(tokenizer, stop, prev=prev)
    for t in tokens:
        if t == eot:
            return
        piece = streamer.push(t)
        if piece:
            yield piece
        if streamer.stopped:
            return
    tail = streamer.flush()
    if tail:
        yield tail
