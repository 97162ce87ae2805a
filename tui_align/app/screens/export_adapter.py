"""Ask for the form and the path to export a trained adapter to."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Input, Label, Select

from ...adapters.export import FORMS


def default_export_path(home: Path, adapter: str, form: str) -> str:
    """GGUF forms are one file; peft and merged are folders."""
    suffix = ".gguf" if form.startswith("gguf") else ""
    return str(home / "exports" / f"{adapter}-{form}{suffix}")


class ExportModal(ModalScreen[tuple[str, str] | None]):
    """Asks for a form and a path; returns (form, path), or None when cancelled."""

    BINDINGS = [Binding("ctrl+s", "save", "Export"), Binding("escape", "cancel", "Cancel")]

    def __init__(self, adapter: str, home: Path) -> None:
        super().__init__()
        self.adapter, self.home = adapter, home

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog transfer"):
            yield Label(f"Export adapter {self.adapter}", markup=False, classes="dialog-title")
            yield Label("Form: peft folder · merged model folder · GGUF LoRA · merged GGUF", classes="hint")
            yield Select(((form, form) for form in FORMS), value=FORMS[0], allow_blank=False, id="form")
            yield Label("Path")
            yield Input(default_export_path(self.home, self.adapter, FORMS[0]), id="path")
            yield Label("", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Export  ctrl+s", variant="primary", id="ok")
                yield Button("Cancel  esc", id="cancel")
        yield Footer()

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        path = self.query_one("#path", Input)
        # Follow the form only while the path is still one of ours, never over what the user typed.
        if path.value in (default_export_path(self.home, self.adapter, form) for form in FORMS):
            path.value = default_export_path(self.home, self.adapter, str(event.value))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_save() if event.button.id == "ok" else self.action_cancel()

    def action_save(self) -> None:
        path = self.query_one("#path", Input).value.strip()
        if not path:
            self.query_one(".error", Label).update("Give a path.")
            return
        self.dismiss((str(self.query_one("#form", Select).value), path))

    def action_cancel(self) -> None:
        self.dismiss(None)
