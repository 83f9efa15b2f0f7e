"""Token ids -> streamed text: whole UTF-8 characters only, cut at the first stop string.

Torch-free on purpose: both the torch engine (generation.py) and numpy_gpt2 stream through it.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from .errors import GPT2KitError
from .tokenization.base import StreamDecoder, Tokenizer


class TextStreamer:
    """Turns ids into text pieces: whole UTF-8 characters only, cut at the first stop string.

    Text that might be the start of a stop string is held back until it is ruled out.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = (), prev: int | None = None):
        if any(not isinstance(s, str) or not s for s in stop):
            raise GPT2KitError("stop strings must be non-empty strings")
        self.decoder = StreamDecoder(tokenizer, prev)  # prev: the prompt's last token (bert spaces words)
        self.stop = list(stop)
        self.pending = ""
        self.stopped = False

    def push(self, token: int) -> str:
        return self._emit(self.pending + self.decoder.push(token), final=False)

    def flush(self) -> str:
        return "" if self.stopped else self._emit(self.pending + self.decoder.flush(), final=True)

    def _emit(self, text: str, final: bool) -> str:
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self.pending = True, ""
            return text[:cut]
        hold = 0 if final else max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self.pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]


def stream_text(tokens: Iterable[int], tokenizer: Tokenizer, stop: Sequence[str] = (), prev: int | None = None) -> Iterator[str]:
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
