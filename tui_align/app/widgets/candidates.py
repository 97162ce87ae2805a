"""N candidate answers side by side, each in its own numbered column."""

from __future__ import annotations

from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Static

# What a finished column (or a single answer's note) says about why the answer ended.
FINISHED = {"eos": "done", "length": "cut at {max_tokens} tokens", "stopped": "stopped", "failed": "failed"}


def finished_label(reason: str, max_tokens: int) -> str:
    """'done' (the model ended it), 'cut at 256 tokens', 'stopped' or 'failed'."""
    return FINISHED.get(reason, reason).format(max_tokens=max_tokens)


class CandidateColumn(VerticalScroll):
    """Candidate `number` (1-based, the key that prefers it), with its state in the bottom border."""

    def __init__(self, number: int) -> None:
        super().__init__(classes="candidate")
        self.number = number
        self.text = ""
        self.border_title = f"{number}"
        self.border_subtitle = "waiting"
        self.can_focus = False  # pick keys live on the screen; nothing here needs focus

    def compose(self):
        yield Static("", markup=False, classes="candidate-text")

    def set_text(self, text: str, state: str | None = None) -> None:
        # No scrolling to the end: the columns stream side by side, and the reader starts at the top of each
        # (a narrow column fills quickly, and following its end hid the opening as it streamed).
        self.text = text
        self.query_one(".candidate-text", Static).update(text)
        if state:
            self.border_subtitle = state


class CandidatesPanel(Horizontal):
    """Hidden until candidates are requested; `open(n)` makes n empty columns."""

    def open(self, count: int) -> None:
        self.remove_children()
        self.mount_all(CandidateColumn(number) for number in range(1, count + 1))
        self.display = True

    def close(self) -> None:
        self.display = False
        self.remove_children()

    def column(self, slot: int) -> CandidateColumn:
        return self.query(CandidateColumn)[slot]

    def set_text(self, slot: int, text: str, state: str | None = None) -> None:
        self.column(slot).set_text(text, state)

    def mark(self, slot: int, state: str) -> None:
        self.column(slot).border_subtitle = state

    def mark_unused(self, first_slot: int = 0) -> None:
        """Columns (from `first_slot` on) that got no text were never generated (stopped or failed first)."""
        for column in list(self.query(CandidateColumn))[first_slot:]:
            if not column.text.strip():
                column.border_subtitle = "not generated"
                column.add_class("unused")
