"""The one interface the app uses to generate text, whatever engine is behind it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

from ..pairs import Message

StopCheck = Callable[[], bool]


@dataclass
class SamplingSettings:
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 256
    # None draws a fresh seed per answer; a number makes answers repeatable.
    seed: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def for_candidate(self, index: int) -> "SamplingSettings":
        """Settings for the index-th of N candidates: distinct seeds, so candidates differ but repeat."""
        seed = None if self.seed is None else self.seed + index
        return SamplingSettings(self.temperature, self.top_p, self.max_tokens, seed)


class Backend(ABC):
    """A loaded chat model. Not thread-safe: one generation at a time."""

    #: Short, stable name of the model, stored with every pair.
    model_id: str
    #: "llamacpp" or "hf".
    engine: str

    @abstractmethod
    def stream_chat(
        self, messages: list[Message], settings: SamplingSettings, should_stop: StopCheck | None = None
    ) -> Iterator[str]:
        """Yield the answer to `messages` piece by piece, using the model's own chat template.

        Stops early, between pieces, once `should_stop()` returns True.
        """

    def chat(self, messages: list[Message], settings: SamplingSettings) -> str:
        return "".join(self.stream_chat(messages, settings))

    def close(self) -> None:
        """Free the model's memory."""
