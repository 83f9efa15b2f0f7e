"""What callers hand the engine and what it hands back, torch-free: a Job in token ids, Pieces of output.

Every caller (gpt2kit.generate, the server's completions and chat routes, eval scoring) describes
its work as a Job; the engine answers each choice with a stream of Pieces.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..sampling_params import SamplingParams
from ..streaming import StopStrings

MAX_LOGPROBS = 20  # top alternatives per token (OpenAI's chat limit; vLLM's default)


@dataclass
class Job:
    """A validated request in token ids: each prompt continued n times.

    max_tokens 0 generates nothing (with echo and logprobs it scores the prompt, as older
    harnesses do). logprobs: top-N alternatives per token, 0..MAX_LOGPROBS; None = no logprobs.
    """

    prompts: list[list[int]]
    max_tokens: int
    params: SamplingParams
    n: int = 1
    seed: int | None = None
    stop: list[str] | StopStrings = field(default_factory=list)  # StopStrings: tables built once, off the engine
    logprobs: int | None = None
    echo: bool = False

    @property
    def num_rows(self) -> int:
        return len(self.prompts) * self.n


@dataclass
class TokenLogprob:
    token: int
    logprob: float | None  # None for the first echoed prompt token (nothing predicts it)
    top: list[tuple[int, float]] | None
    offset: int  # character offset of the token's text within the choice's text


@dataclass
class Piece:
    """New output of one choice: text plus the tokens it came from (when logprobs are on)."""

    index: int
    text: str
    tokens: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # "stop" | "length" when the choice ends
