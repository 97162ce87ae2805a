"""How long the chat's context is, measured against the length a training run keeps of each pair.

A pick's pair carries the whole conversation as its prompt, so a long chat makes pairs that training cuts
(`--max-length`, in tokens of prompt + answer). The status bar says how long the context is and warns
before the next pick would make such a pair.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..training.config import TrainConfig

#: What a run keeps of a pair when the Train form's max length is left as it is.
TRAIN_MAX_LENGTH = TrainConfig().max_length


@dataclass(frozen=True)
class ContextSize:
    """The context now, in tokens of the chat-templated prompt when the engine can count them (else None,
    and only characters are known), and the tokens of the last answer, which stands in for the next one."""

    chars: int
    tokens: int | None = None
    answer_tokens: int = 0
    max_length: int = TRAIN_MAX_LENGTH

    @property
    def next_pair_tokens(self) -> int | None:
        """The context plus an answer as long as the last one: a floor for the next pair (the next message
        comes on top)."""
        return None if self.tokens is None else self.tokens + self.answer_tokens

    @property
    def too_long(self) -> bool:
        """True when the next pair would not fit the training max length."""
        return self.next_pair_tokens is not None and self.next_pair_tokens >= self.max_length

    def text(self) -> str:
        if self.tokens is None:
            return f"context {self.chars:,} chars"
        if self.too_long:
            return f"context {self.tokens} tokens: the next pair won't fit training's {self.max_length} · ctrl+l new chat"
        return f"context {self.tokens}/{self.max_length} tokens"


def measure(backend, prompt: list[dict]) -> ContextSize:
    """Count `prompt` (the system prompt and every turn) with `backend`'s tokenizer; runs on a worker thread,
    under the generation lock, since a backend does one thing at a time."""
    if not prompt:
        return ContextSize(0, 0)
    chars = sum(len(turn["content"]) for turn in prompt)
    tokens = backend.count_tokens(prompt)
    answers = [turn for turn in prompt if turn["role"] == "assistant"]
    answer_tokens = 0
    if tokens is not None and answers:
        answer_tokens = backend.count_tokens([answers[-1]]) or 0
    return ContextSize(chars, tokens, answer_tokens)
