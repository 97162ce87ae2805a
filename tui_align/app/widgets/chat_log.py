"""The scrolling message log of the chat screen."""

from __future__ import annotations

from textual.containers import VerticalScroll
from textual.widgets import Static

from ...pairs import Message

ROLE_TITLES = {"system": "system", "user": "you", "assistant": "model"}


class MessageView(Static):
    """One turn. Model text is shown verbatim: markup off, so "[b]" in an answer stays "[b]"."""

    def __init__(self, role: str, text: str = "") -> None:
        super().__init__(text, markup=False, classes=f"message {role}")
        self.role = role
        self.text = text
        self.border_title = ROLE_TITLES.get(role, role)

    def set_text(self, text: str) -> None:
        self.text = text
        self.update(text)

    def set_note(self, note: str) -> None:
        """A short remark in the bottom border, e.g. 'stopped' or 'picked 2 of 3'."""
        self.border_subtitle = note


class ChatLog(VerticalScroll):
    """The conversation, newest at the bottom; follows the end while an answer streams."""

    def add(self, role: str, text: str = "", note: str = "") -> MessageView:
        view = MessageView(role, text)
        view.set_note(note)
        self.mount(view)
        self.scroll_end(animate=False)
        return view

    def show(self, system_prompt: str, turns: list[Message]) -> None:
        """Replace the log with `turns` (and the system prompt, when there is one)."""
        self.remove_children()
        if system_prompt.strip():
            self.add("system", system_prompt)
        for turn in turns:
            self.add(turn["role"], turn["content"])

    def follow(self) -> None:
        """Keep the newest text in view while it grows."""
        self.scroll_end(animate=False)
