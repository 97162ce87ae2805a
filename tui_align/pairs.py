"""The preference pair: the unit everything else in tui-align reads or writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant"]
Message = dict  # {"role": Role, "content": str}

SOURCES = ("picked", "written", "compare", "imported")


def last_user_message(messages: list[Message]) -> str:
    """The content of the last user turn in `messages` ("" when there is none)."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


@dataclass
class Pair:
    """One preference: after `prompt` (a message list ending with a user turn), `chosen` beats `rejected`."""

    prompt: list[Message]
    chosen: str
    rejected: str
    source: str = "imported"
    model: str | None = None
    settings: dict = field(default_factory=dict)
    id: int | None = None
    created_at: str | None = None

    @property
    def last_user_message(self) -> str:
        """The user turn the two answers reply to."""
        return last_user_message(self.prompt)
