"""F1 / "?": every key, gathered from the main screens' HELP texts so a new screen documents itself."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Label, Markdown

GLOBAL_HELP = """\
## Everywhere
| Key | Does |
|---|---|
| F1, ? | this help |
| {screen_keys} | switch screen |
| ctrl+p | command palette: every action by name |
| ctrl+q | quit (every pick is already saved) |
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q,question_mark", "close", "Close")]

    def __init__(self, sections: list[tuple[str, str, str]]) -> None:
        """`sections`: (title, key, markdown) per main screen."""
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        keys = ", ".join(f"{key.upper()} {title}" for title, key, _ in self.sections)
        parts = [GLOBAL_HELP.format(screen_keys=keys)]
        parts += [f"## {title} ({key.upper()})\n{text}" for title, key, text in self.sections if text]
        with Vertical(classes="dialog help"):
            yield Label("tui-align help   (esc closes)", classes="dialog-title")
            with VerticalScroll():
                yield Markdown("\n".join(parts))
        yield Footer()

    def action_close(self) -> None:
        self.dismiss(None)
