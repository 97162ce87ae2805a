"""Ask for a file and a format, for importing or exporting pairs."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Input, Label, Select

# formats.py owns the real list; this copy only fills the menu if it can't be imported yet.
FALLBACK_FORMATS = ("trl", "trl-chat", "hh")


def known_formats() -> tuple[str, ...]:
    try:
        from ...formats import FORMATS
    except ImportError:
        return FALLBACK_FORMATS
    return tuple(FORMATS)


class TransferModal(ModalScreen[tuple[str, str] | None]):
    """For action "import" or "export": returns (path, format), or None when cancelled."""

    BINDINGS = [
        Binding("ctrl+s", "save", "OK"),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, action: str, default_path: str = "") -> None:
        super().__init__()
        self.action = action
        self.default_path = default_path

    def compose(self) -> ComposeResult:
        formats = known_formats()
        choices = (("auto", "auto"),) if self.action == "import" else ()
        choices += tuple((name, name) for name in formats)
        with Vertical(classes="dialog transfer"):
            yield Label(f"{self.action.capitalize()} pairs (JSONL)", classes="dialog-title")
            yield Label("File")
            yield Input(self.default_path, id="path", placeholder="path/to/pairs.jsonl")
            yield Label("Format")
            yield Select(choices, value=choices[0][1], allow_blank=False, id="format")
            yield Label("", classes="error")
            with Horizontal(classes="buttons"):
                yield Button(f"{self.action.capitalize()}  ctrl+s", variant="primary", id="ok")
                yield Button("Cancel  esc", id="cancel")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#path", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_save() if event.button.id == "ok" else self.action_cancel()

    def action_save(self) -> None:
        path = self.query_one("#path", Input).value.strip()
        error = ""
        if not path:
            error = "Give a file path."
        elif self.action == "import" and not Path(path).expanduser().is_file():
            error = f"No such file: {path}"
        if error:
            self.query_one(".error", Label).update(error)
            return
        self.dismiss((str(Path(path).expanduser()), str(self.query_one("#format", Select).value)))

    def action_cancel(self) -> None:
        self.dismiss(None)
