"""A modal with one TextArea: the system prompt, or an answer the user writes."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Label, Static, TextArea


class TextModal(ModalScreen[str | None]):
    """Returns the edited text (ctrl+s), or None when cancelled (esc)."""

    BINDINGS = [
        Binding("ctrl+s", "save", "Save"),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, title: str, text: str = "", hint: str = "", allow_empty: bool = False) -> None:
        super().__init__()
        self.title_text, self.text, self.hint, self.allow_empty = title, text, hint, allow_empty

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            if self.hint:
                yield Static(self.hint, markup=False, classes="hint")
            yield TextArea(self.text, soft_wrap=True, id="text")
            yield Label("", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Save  ctrl+s", variant="primary", id="save")
                yield Button("Cancel  esc", id="cancel")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(TextArea).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_save() if event.button.id == "save" else self.action_cancel()

    def action_save(self) -> None:
        text = self.query_one(TextArea).text
        if not text.strip() and not self.allow_empty:
            self.query_one(".error", Label).update("Write something first, or press esc to cancel.")
            return
        self.dismiss(text.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)
