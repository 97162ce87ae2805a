"""The sampling settings modal: temperature, top-p, max tokens, seed and the number of candidates."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Input, Label

from ...backends.base import SamplingSettings
from ...errors import UserError
from ..settings_text import MAX_CANDIDATES, MIN_CANDIDATES, parse_settings

FIELDS = ("temperature", "top_p", "max_tokens", "seed", "candidates")


class SettingsModal(ModalScreen[tuple[SamplingSettings, int] | None]):
    """Returns (settings, candidate count) once every field is valid, or None when cancelled."""

    BINDINGS = [
        Binding("ctrl+s", "save", "Save"),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, settings: SamplingSettings, candidates: int) -> None:
        super().__init__()
        self.settings, self.candidates = settings, candidates

    def compose(self) -> ComposeResult:
        s = self.settings
        values = {
            "temperature": (f"{s.temperature:g}", "Temperature (0–2, 0 = greedy)"),
            "top_p": (f"{s.top_p:g}", "Top-p (0–1]"),
            "max_tokens": (str(s.max_tokens), "Max tokens"),
            "seed": ("" if s.seed is None else str(s.seed), "Seed (empty = random)"),
            "candidates": (str(self.candidates), f"Candidates N ({MIN_CANDIDATES}–{MAX_CANDIDATES})"),
        }
        with Vertical(classes="dialog settings"):
            yield Label("Sampling settings", classes="dialog-title")
            for name in FIELDS:
                value, label = values[name]
                with Horizontal(classes="field"):
                    yield Label(label)
                    yield Input(value, id=name, placeholder="random" if name == "seed" else "")
            yield Label("", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Save  ctrl+s", variant="primary", id="save")
                yield Button("Cancel  esc", id="cancel")
        yield Footer()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_save() if event.button.id == "save" else self.action_cancel()

    def action_save(self) -> None:
        try:
            result = parse_settings(*(self.query_one(f"#{name}", Input).value for name in FIELDS))
        except UserError as exc:
            self.query_one(".error", Label).update(str(exc))
            return
        self.dismiss(result)

    def action_cancel(self) -> None:
        self.dismiss(None)
