"""The one-line status under the header: model state, pairs collected, the context's length, a training run
going on, sampling settings, system prompt."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..context_size import ContextSize

STATE_STYLES = {"loading": "yellow", "ready": "green", "failed": "bold red"}


def status_text(state: str, error: str, settings: str, pairs: int, system_prompt: str,
                context: ContextSize | None = None, training: str = "") -> Text:
    """'● model ready │ 3 pairs │ context 40/256 tokens │ dpo step 3/30 … │ temp … │ system: …'; the load
    error, in red, replaces 'model ready'.

    The model's name is in the header; the pair counter, the context and the run come early so a narrow
    terminal keeps them.
    """
    line = Text()
    marker = {"loading": "◌ loading model…", "ready": "● model ready", "failed": f"✗ {error}"}.get(state, state)
    line.append(marker, style=STATE_STYLES.get(state, ""))
    line.append(" │ ")
    line.append(f"{pairs} pair{'s' if pairs != 1 else ''}", style="bold")
    if context is not None:
        line.append(" │ ")
        line.append(context.text(), style="bold yellow" if context.too_long else "")
    if training:
        line.append(" │ ")
        line.append(training, style="cyan")
    line.append(f" │ {settings}")
    if system_prompt.strip():
        first = system_prompt.strip().splitlines()[0]
        line.append(f" │ system: {first[:40]}{'…' if len(first) > 40 else ''}", style="italic")
    return line


class StatusBar(Static):
    """Shows `status_text`; the chat screen calls `show` when any part changes."""

    def show(self, **parts) -> None:
        self.update(status_text(**parts))
