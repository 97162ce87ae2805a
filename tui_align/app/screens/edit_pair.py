"""Edit the chosen and rejected answers of one stored pair."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Label, Static, TextArea

from ...pairs import Pair


def prompt_as_text(pair: Pair) -> str:
    """The prompt's messages, one 'role: content' block each."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in pair.prompt)


class EditPairModal(ModalScreen[tuple[str, str] | None]):
    """Returns (chosen, rejected) on ctrl+s, or None on esc."""

    BINDINGS = [
        Binding("ctrl+s", "save", "Save"),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, pair: Pair) -> None:
        super().__init__()
        self.pair = pair

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog edit-pair"):
            yield Label(f"Pair {self.pair.id} ({self.pair.source})", classes="dialog-title")
            with VerticalScroll(classes="prompt"):
                yield Static(prompt_as_text(self.pair), markup=False)
            with Horizontal(classes="answers"):
                with Vertical():
                    yield Label("chosen", classes="chosen-label")
                    yield TextArea(self.pair.chosen, soft_wrap=True, id="chosen")
                with Vertical():
                    yield Label("rejected", classes="rejected-label")
                    yield TextArea(self.pair.rejected, soft_wrap=True, id="rejected")
            yield Label("", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Save  ctrl+s", variant="primary", id="save")
                yield Button("Cancel  esc", id="cancel")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#chosen", TextArea).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_save() if event.button.id == "save" else self.action_cancel()

    def action_save(self) -> None:
        chosen = self.query_one("#chosen", TextArea).text.strip()
        rejected = self.query_one("#rejected", TextArea).text.strip()
        if not chosen or not rejected:
            self.query_one(".error", Label).update("Neither answer may be empty.")
            return
        if chosen == rejected:
            self.query_one(".error", Label).update("Chosen and rejected are identical: that pair teaches nothing.")
            return
        self.dismiss((chosen, rejected))

    def action_cancel(self) -> None:
        self.dismiss(None)
