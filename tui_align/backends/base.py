"""The one interface the app uses to generate text, whatever engine is behind it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Sequence

from ..pairs import Message

StopCheck = Callable[[], bool]

#: Why an answer ended: the model wrote its end-of-answer token, it reached max_tokens, or it was asked to stop.
FINISH_REASONS = ("eos", "length", "stopped")
#: The most candidates the app asks for at once (settings_text.MAX_CANDIDATES, which backends/ can't import).
MOST_CANDIDATES = 4


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


@dataclass
class Chunk:
    """One step of N answers streaming together: new text for answer `slot`, and once, at its end, why it
    ended (`finished`, one of FINISH_REASONS; None while it goes on)."""

    slot: int
    text: str = ""
    finished: str | None = None


class Backend(ABC):
    """A loaded chat model. Not thread-safe: one generation at a time."""

    #: Short, stable name of the model, stored with every pair.
    model_id: str
    #: "llamacpp" or "hf".
    engine: str
    #: True when stream_candidates decodes all answers in one batch (they stream at once), False when it
    #: writes them one after the other.
    batches_candidates: bool = False
    #: CPU cores the app's own training run lends for the answers being generated (the app sets it around
    #: each generation; engines that pick their thread count from the free cores add it: cpu_share.py).
    lent_cores: int = 0

    @abstractmethod
    def stream_chat(
        self, messages: list[Message], settings: SamplingSettings, should_stop: StopCheck | None = None
    ) -> Iterator[str]:
        """Yield the answer to `messages` piece by piece, using the model's own chat template.

        Stops early, between pieces, once `should_stop()` returns True. The generator's return value (what
        `yield from` gives) is why it ended, one of FINISH_REASONS; None when the engine can't tell.
        """

    def stream_candidates(
        self, messages: list[Message], settings_list: Sequence[SamplingSettings], should_stop: StopCheck
    ) -> Iterator[Chunk]:
        """N answers to `messages`, one per settings (slot i is settings_list[i]), as Chunks: each slot's
        pieces in order, and one Chunk with `finished` set when it ends. A stop request ends every slot.

        Here one after the other through stream_chat; engines that decode them in one batch override it."""
        for slot, settings in enumerate(settings_list):
            if should_stop():
                yield Chunk(slot, finished="stopped")
                continue
            stream = self.stream_chat(messages, settings, should_stop)
            while True:
                try:
                    piece = next(stream)
                except StopIteration as end:
                    reason = end.value
                    break
                yield Chunk(slot, piece)
            if should_stop():
                reason = "stopped"
            yield Chunk(slot, finished=reason or "eos")

    def count_tokens(self, messages: list[Message]) -> int | None:
        """Tokens of the prompt `messages` make, chat template included; None when this engine can't tell."""
        return None

    def chat(self, messages: list[Message], settings: SamplingSettings) -> str:
        return "".join(self.stream_chat(messages, settings))

    def close(self) -> None:
        """Free the model's memory."""
