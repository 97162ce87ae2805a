"""How each main screen looks (pytest-textual-snapshot). Update with --snapshot-update, then read the SVGs."""

from __future__ import annotations

import pytest
from textual.widgets import Input, TextArea

from tui_align.app import AlignApp
from tui_align.backends.base import SamplingSettings
from tui_align.errors import UserError
from tui_align.pairs import Pair
from tui_align.store import Store

from fakes import ScriptedBackend

SIZE = (100, 30)


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    yield store
    store.close()


def build_app(store, tmp_path, *replies: str, load=None) -> AlignApp:
    backend = ScriptedBackend(*replies)
    return AlignApp(store=store, load_backend=load or (lambda: backend), home=tmp_path,
                    model_label="SmolLM2-135M-Instruct.Q4_1.gguf (llamacpp)",
                    settings=SamplingSettings(seed=42), candidate_count=3)


async def settle(pilot) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def send(pilot, text: str, key: str) -> None:
    pilot.app.screen.query_one("#message", Input).value = text
    await pilot.press(key)
    await settle(pilot)


async def freeze(pilot) -> None:
    """No blinking cursors or leftover toasts: the picture must not depend on timing."""
    app = pilot.app
    app.clear_notifications()
    for widget in app.screen.query("Input, TextArea"):
        widget.cursor_blink = False
    await pilot.pause()


def test_chat_screen_with_a_conversation(snap_compare, store, tmp_path):
    """The chat log with a system prompt, a question and a streamed answer; settings in the status line."""
    app = build_app(store, tmp_path, "The capital of France is Paris. It sits on the Seine.")

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("ctrl+r")
        pilot.app.screen.query_one(TextArea).text = "You are a concise geography tutor."
        await pilot.press("ctrl+s")
        await send(pilot, "What is the capital of France?", "enter")
        await freeze(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_chat_screen_picking_between_three_candidates(snap_compare, store, tmp_path):
    """Three candidates side by side, the pick hint, and only the pick keys in the footer."""
    app = build_app(
        store, tmp_path,
        "Paris.",
        "The capital of France is Paris, on the river Seine.",
        "France's capital is Paris, which is also its largest city and home to about two million people.",
    )

    async def run_before(pilot):
        await settle(pilot)
        await send(pilot, "What is the capital of France?", "ctrl+n")
        await freeze(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_chat_screen_when_the_model_fails_to_load(snap_compare, store, tmp_path):
    """A load failure: one red line in the status bar and one error toast, no traceback."""

    def broken():
        raise UserError("Model not found: /models/missing.gguf")

    app = build_app(store, tmp_path, load=broken)

    async def run_before(pilot):
        await settle(pilot)
        for widget in pilot.app.screen.query("Input"):
            widget.cursor_blink = False

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_settings_modal(snap_compare, store, tmp_path):
    """The sampling settings form over the chat screen."""
    app = build_app(store, tmp_path)

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("ctrl+s")
        await freeze(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_pairs_screen(snap_compare, store, tmp_path):
    """The pairs table with counts by source."""
    question = [{"role": "user", "content": "What is the capital of France?"}]
    store.add_pairs([
        Pair(question, "The capital of France is Paris.", "Lyon is the capital.", source="picked"),
        Pair(question, "Paris, on the Seine.", "I don't know.", source="written"),
        Pair([{"role": "user", "content": "Name a primary colour."}], "Red.", "Purple.", source="imported"),
    ])
    app = build_app(store, tmp_path)

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("f3")
        await freeze(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_help_screen(snap_compare, store, tmp_path):
    """F1 lists the keys of every main screen."""
    app = build_app(store, tmp_path)

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("f1")
        await freeze(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
