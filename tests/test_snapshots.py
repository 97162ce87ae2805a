"""How each main screen looks (pytest-textual-snapshot). Update with --snapshot-update, then read the SVGs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.widgets import Input, Select, TextArea

from tui_align.backends.base import SamplingSettings
from tui_align.errors import UserError
from tui_align.pairs import Pair
from tui_align.paths import adapters_dir
from tui_align.training import synthetic

from conftest import settle, wait_exited, wait_until
from fakes import STEPS_THEN_DONE, ScriptedBackend, fake_child

SIZE = (100, 30)
MODEL_LABEL = "SmolLM2-135M-Instruct.Q4_1.gguf (llamacpp)"


@pytest.fixture
def build_app(make_app):
    """The app as a user starts it on the default model, answering `replies` in turn."""

    def build(*replies: str, load=None, **kwargs):
        return make_app(ScriptedBackend(*replies), load=load, model_label=MODEL_LABEL,
                        settings=SamplingSettings(seed=42), candidate_count=3, **kwargs)

    return build


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


def run_folder(home: Path, name: str, method: str, status: str, adapter: bool = False, checkpoint: bool = False,
               **run) -> Path:
    """A run folder as training leaves it; nothing here reads the weights."""
    folder = adapters_dir(home) / name
    folder.mkdir(parents=True)
    if adapter:
        (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16}))
        (folder / "adapter_model.safetensors").write_bytes(b"not really weights")
    if checkpoint:
        (folder / "checkpoint").mkdir()
    stamp = f"{name[:4]}-{name[4:6]}-{name[6:8]}T{name[9:11]}:{name[11:13]}:00+00:00"
    (folder / "run.json").write_text(json.dumps({"method": method, "status": status, "created_at": stamp, **run}))
    return folder


def test_chat_screen_with_a_conversation(snap_compare, build_app):
    """The chat log with a system prompt, a question and a streamed answer; settings in the status line."""
    app = build_app("The capital of France is Paris. It sits on the Seine.")

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("ctrl+r")
        pilot.app.screen.query_one(TextArea).text = "You are a concise geography tutor."
        await pilot.press("ctrl+s")
        await send(pilot, "What is the capital of France?", "enter")
        await freeze(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_chat_screen_while_a_run_trains(snap_compare, build_app, store, tmp_path, monkeypatch):
    """The status line shows the run going on (method, step k/N, ETA) while the user chats."""
    from test_run_status import GATED_STEPS
    from test_train_screen import ChildGate

    store.add_pairs(synthetic.trait_pairs(6, "prefix"))
    script = fake_child(monkeypatch, tmp_path, GATED_STEPS)
    gate = ChildGate(Path(f"{script}.gate"))
    app = build_app("Paris.")

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("f4", "ctrl+g", "f2")
        run = pilot.app.get_screen("train").train_run
        gate.release(3)
        await wait_until(pilot, lambda: "step 3/30" in pilot.app.training_line, "the chat shows step 3")
        # Not send(): settling would wait for the training reader too, which runs until the gate closes.
        pilot.app.screen.query_one("#message", Input).value = "What is the capital of France?"
        await pilot.press("enter")
        chat = pilot.app.screen
        await wait_until(pilot, lambda: chat.phase == "idle" and len(chat.session.turns) == 2, "the answer")
        await wait_until(pilot, lambda: chat.context is not None and chat.context.tokens == 7, "the context count")
        await freeze(pilot)
        assert run.running

    try:
        assert snap_compare(app, terminal_size=(120, 30), run_before=run_before)
    finally:
        gate.close()


def test_chat_screen_picking_between_three_candidates(snap_compare, build_app):
    """Three candidates side by side, the pick hint, and only the pick keys in the footer."""
    app = build_app(
        "Paris.",
        "The capital of France is Paris, on the river Seine.",
        "France's capital is Paris, which is also its largest city and home to about two million people.",
    )

    async def run_before(pilot):
        await settle(pilot)
        await send(pilot, "What is the capital of France?", "ctrl+n")
        await freeze(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_chat_screen_when_the_model_fails_to_load(snap_compare, build_app):
    """A load failure: one red line in the status bar and one error toast, no traceback."""

    def broken():
        raise UserError("Model not found: /models/missing.gguf")

    app = build_app(load=broken)

    async def run_before(pilot):
        await settle(pilot)
        for widget in pilot.app.screen.query("Input"):
            widget.cursor_blink = False

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_conversations_list(snap_compare, build_app, store):
    """ctrl+o: the stored conversations, newest first, the open one marked, with their pair counts."""
    spanish = store.new_conversation()
    store.add_message(spanish, "user", "Translate 'the black cat' to Spanish, please")
    store.record_pick([{"role": "user", "content": "Translate 'the black cat' to Spanish, please"}],
                      ["el gato negro", "la gata negra"], "chosen", chosen_index=0, conversation_id=spanish)
    store.rename_conversation(spanish, "Spanish practice")
    app = build_app("Paris.")

    async def run_before(pilot):
        await settle(pilot)
        await send(pilot, "What is the capital of France?", "enter")
        await pilot.press("ctrl+o")
        await freeze(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_settings_modal(snap_compare, build_app):
    """The sampling settings form over the chat screen."""
    app = build_app()

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("ctrl+s")
        await freeze(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_pairs_screen(snap_compare, build_app, store):
    """The pairs table with counts by source."""
    question = [{"role": "user", "content": "What is the capital of France?"}]
    store.add_pairs([
        Pair(question, "The capital of France is Paris.", "Lyon is the capital.", source="picked"),
        Pair(question, "Paris, on the Seine.", "I don't know.", source="written"),
        Pair([{"role": "user", "content": "Name a primary colour."}], "Red.", "Purple.", source="imported"),
    ])
    app = build_app()

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("f3")
        await freeze(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_help_screen(snap_compare, build_app):
    """F1 lists the keys of every main screen."""
    app = build_app()

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("f1")
        await freeze(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_train_screen_after_a_run(snap_compare, build_app, store, tmp_path, monkeypatch):
    """The form, a finished run's full bar, its last metrics and held-out line, the loss and accuracy
    sparklines, and the event log with the command that ran."""
    store.add_pairs(synthetic.trait_pairs(6, "prefix"))
    # Relative paths, so the log's command line reads the same in every temp folder.
    monkeypatch.chdir(tmp_path)
    fake_child(monkeypatch, Path("."), STEPS_THEN_DONE)
    app = build_app(home=Path("home"))

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("f4")
        await pilot.press("ctrl+g")
        await wait_exited(pilot, pilot.app.screen.train_run)
        await freeze(pilot)

    assert snap_compare(app, terminal_size=(110, 40), run_before=run_before)


def test_compare_screen_with_both_answers(snap_compare, build_app, private_home):
    """Base and a trained run side by side (blind off: old on the left), one seed, and the pick keys."""
    run_folder(private_home, "20261124-120000-dpo", "dpo", "completed", adapter=True,
               metrics={"eval_accuracy": 0.875})
    app = build_app()
    base = ScriptedBackend(default="Paris.", model_id="base")
    tuned = ScriptedBackend(default="The capital of France is Paris, on the Seine.", model_id="base+run")

    async def run_before(pilot):
        await settle(pilot)
        screen = pilot.app.get_screen("compare")
        pilot.app.load_compare_pair = lambda old, new: (base, tuned)
        await pilot.press("f5")
        await settle(pilot)
        await pilot.press("ctrl+b")
        screen.query_one("#compare-new", Select).value = "20261124-120000-dpo"
        await pilot.pause()  # the select's event starts the loading worker
        await settle(pilot)
        screen.query_one("#compare-prompt", Input).value = "What is the capital of France?"
        await pilot.press("enter")
        await settle(pilot)
        await freeze(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_adapters_screen(snap_compare, build_app, private_home):
    """Three runs (completed with metrics, cancelled with a checkpoint, failed before one), the cancelled
    one selected, so Resume is lit in the footer."""
    run_folder(private_home, "20261124-120000-dpo", "dpo", "completed", adapter=True,
               data={"train_pairs": 32}, metrics={"eval_accuracy": 0.875, "eval_margin": 1.234})
    run_folder(private_home, "20261123-090000-orpo", "orpo", "cancelled", checkpoint=True, data={"train_pairs": 40})
    run_folder(private_home, "20261122-180000-dpo", "dpo", "failed")
    app = build_app()

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("f6", "down")
        await freeze(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
