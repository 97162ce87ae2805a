"""The Textual app, driven with Pilot against a ScriptedBackend and a real Store in tmp_path."""

from __future__ import annotations

import threading

import pytest
from textual.widgets import DataTable, Input, TextArea

from tui_align.app.screens.chat import ChatScreen
from tui_align.app.screens.confirm import ConfirmModal
from tui_align.app.screens.edit_pair import EditPairModal
from tui_align.app.screens.help import HelpScreen
from tui_align.app.screens.pairs import PairsScreen, preview
from tui_align.app.screens.settings import SettingsModal
from tui_align.app.screens.text_modal import TextModal
from tui_align.app.session import ChatSession
from tui_align.app.settings_text import describe, parse_settings
from tui_align.app.widgets.candidates import CandidateColumn
from tui_align.app.widgets.chat_log import MessageView
from tui_align.app.widgets.status_bar import StatusBar
from tui_align.backends.base import SamplingSettings
from tui_align.errors import UserError
from tui_align.pairs import Pair

from conftest import settle, type_and, views
from fakes import FailingBackend, GatedBackend, ScriptedBackend

SIZE = (100, 32)




def status(app) -> str:
    return str(app.screen.query_one(StatusBar).render())


# Chat ----------------------------------------------------------------------------------------


async def test_message_streams_an_answer_and_the_chat_is_stored(make_app, store):
    backend = ScriptedBackend("The capital of France is Paris.", "It has about two million people.")
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await type_and(pilot, "Capital of France?", "enter")
        assert views(app)[-1] == ("assistant", "The capital of France is Paris.")
        assert backend.pieces_sent == 6  # streamed word by word, not in one piece
        await type_and(pilot, "How many people live there?", "enter")
        history, _ = backend.requests[-1]
        assert [m["role"] for m in history] == ["user", "assistant", "user"]
        stored = store.messages(app.screen.session.conversation_id)
        assert stored[-1] == {"role": "assistant", "content": "It has about two million people."}
        assert len(stored) == 4


async def test_digits_and_pick_letters_type_into_the_input_outside_pick_mode(make_app, store):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press(*"w1 2st?")
        assert app.screen.query_one("#message", Input).value == "w1 2st?"
        assert isinstance(app.screen, ChatScreen) and store.count_pairs() == 0


async def test_pressing_2_prefers_the_second_candidate(make_app, store):
    backend = ScriptedBackend("first candidate", "second candidate")
    app = make_app(backend, settings=SamplingSettings(seed=7))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await type_and(pilot, "Say something", "ctrl+n")
        columns = app.screen.query(CandidateColumn)
        assert [c.text for c in columns] == ["first candidate", "second candidate"]
        assert [settings.seed for _, settings in backend.requests] == [7, 8]  # distinct, repeatable
        await pilot.press("2")
        await pilot.pause()
        pairs = store.list_pairs()
        assert len(pairs) == 1
        assert pairs[0].prompt == [{"role": "user", "content": "Say something"}]
        assert (pairs[0].chosen, pairs[0].rejected, pairs[0].source) == ("second candidate", "first candidate", "picked")
        assert pairs[0].model == "scripted-model" and pairs[0].settings["candidates"] == 2
        assert views(app)[-1] == ("assistant", "second candidate")
        assert app.screen.phase == "idle" and app.pair_count == 1
        assert "1 pair" in status(app)


async def test_pick_keys_beyond_n_do_nothing(make_app, store):
    app = make_app(ScriptedBackend("a one", "b two"))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await type_and(pilot, "Hi", "ctrl+n")
        await pilot.press("3", "4")
        assert app.screen.phase == "picking" and store.count_pairs() == 0


async def test_written_answer_beats_every_candidate(make_app, store):
    app = make_app(ScriptedBackend("meh one", "meh two"))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await type_and(pilot, "Explain tides", "ctrl+n")
        await pilot.press("w")
        assert isinstance(app.screen, TextModal)
        await pilot.press(*"The Moon pulls")
        await pilot.press("ctrl+s")
        await pilot.pause()
        pairs = store.list_pairs()
        assert len(pairs) == 2 and {p.source for p in pairs} == {"written"}
        assert {p.chosen for p in pairs} == {"The Moon pulls"}
        assert {p.rejected for p in pairs} == {"meh one", "meh two"}
        assert views(app)[-1] == ("assistant", "The Moon pulls")


async def test_tie_continues_with_candidate_1_and_skip_leaves_the_turn_open(make_app, store):
    app = make_app(ScriptedBackend("alpha", "beta", "gamma", "delta", "final answer"))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await type_and(pilot, "First", "ctrl+n")
        await pilot.press("t")
        await pilot.pause()
        assert app.screen.session.turns[-1] == {"role": "assistant", "content": "alpha"}
        await type_and(pilot, "Second", "ctrl+n")
        await pilot.press("s")
        await pilot.pause()
        assert app.screen.session.awaiting_answer
        assert store.count_pairs() == 0 and store.pick_counts() == {"tie": 1, "skip": 1}
        await type_and(pilot, "", "enter")  # empty Enter answers the open turn
        assert app.screen.session.turns[-1] == {"role": "assistant", "content": "final answer"}


async def test_candidates_for_an_answered_turn_branch_the_conversation(make_app, store):
    app = make_app(ScriptedBackend("plain answer", "c1", "c2"))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await type_and(pilot, "Hello", "enter")
        first_conversation = app.screen.session.conversation_id
        await type_and(pilot, "", "ctrl+n")
        assert app.screen.phase == "picking"
        await pilot.press("1")
        await pilot.pause()
        assert app.screen.session.conversation_id != first_conversation
        assert store.list_pairs()[0].prompt == [{"role": "user", "content": "Hello"}]
        assert store.messages(first_conversation)[-1]["content"] == "plain answer"  # never rewritten


async def test_escape_stops_a_slow_answer_and_keeps_the_partial_text(make_app):
    backend = GatedBackend(" ".join(f"word{i}" for i in range(200)), "quick reply")
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.screen.query_one("#message", Input).value = "Talk a lot"
        await pilot.press("enter")
        backend.release(5)
        await backend.wait_handed_over(5)
        await pilot.press("escape")
        await settle(pilot)
        role, text = views(app)[-1]
        assert (role, text) == ("assistant", "word0 word1 word2 word3 word4 ") and backend.pieces_sent == 5
        assert app.screen.query(MessageView).last().border_subtitle == "stopped"
        assert app.screen.session.turns[-1]["content"] == text
        backend.release_all()
        await type_and(pilot, "Shorter please", "enter")  # still responsive
        assert views(app)[-1] == ("assistant", "quick reply")


async def test_escape_while_candidates_stream_allows_picking_what_was_written(make_app, store):
    backend = GatedBackend("short one", " ".join(["long"] * 300))
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.screen.query_one("#message", Input).value = "Go"
        await pilot.press("ctrl+n")
        backend.release(5)  # a word of each per step: short, long, one (it ends), long, long
        await backend.wait_handed_over(5)
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen.phase == "picking"
        await pilot.press("2")
        await pilot.pause()
        pair = store.list_pairs()[0]
        assert (pair.chosen, pair.rejected) == ("long long long ", "short one")


async def test_identical_candidates_make_no_pair_and_say_so(make_app, store):
    app = make_app(ScriptedBackend("same words", "same words"))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await type_and(pilot, "Greedy twice", "ctrl+n")
        await pilot.press("1")
        await pilot.pause()
        assert store.count_pairs() == 0 and store.pick_counts() == {"chosen": 1}
        assert any("identical" in n.message for n in app._notifications)


async def test_quitting_mid_answer_stops_the_generation_and_closes_the_model(make_app):
    backend = GatedBackend(" ".join(["slow"] * 500))
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.screen.query_one("#message", Input).value = "Go on"
        await pilot.press("enter")
        backend.release(2)
        await backend.wait_handed_over(2)
    assert backend.closed and backend.finished == 1 and backend.pieces_sent == 2


def errors(app) -> list[str]:
    return [n.message for n in app._notifications if n.severity == "error"]


async def test_generation_error_is_one_line_and_the_app_survives(make_app):
    app = make_app(FailingBackend(UserError("llama.cpp: prompt too long")))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await type_and(pilot, "Hi", "enter")
        assert app.screen.phase == "idle"
        assert errors(app) == ["llama.cpp: prompt too long"]


# Loading the model ---------------------------------------------------------------------------


async def test_chat_appears_at_once_while_the_model_loads(make_app):
    release, backend = threading.Event(), ScriptedBackend("ready now")

    def slow_load():
        release.wait(10)
        return backend

    app = make_app(load=slow_load)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, ChatScreen) and "loading model…" in status(app)
        app.screen.query_one("#message", Input).value = "early"
        await pilot.press("enter")
        assert app.screen.query_one("#message", Input).value == "early"  # kept for later
        release.set()
        await settle(pilot)
        assert "ready" in status(app)
        await pilot.press("enter")
        await settle(pilot)
        assert views(app)[-1] == ("assistant", "ready now")


@pytest.mark.parametrize("error, shown", [
    (UserError("Model not found: /nowhere/model.gguf"), "Model not found: /nowhere/model.gguf"),
    (RuntimeError("bad magic\nmore detail"), "Couldn't load the model: RuntimeError: bad magic"),
])
async def test_model_load_failure_is_shown_and_the_app_keeps_running(make_app, error, shown):
    def broken_load():
        raise error

    app = make_app(load=broken_load)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.backend_state == "failed"
        assert shown in status(app) and "\n" not in app.backend_error
        assert any(n.message == shown and n.severity == "error" for n in app._notifications)
        await type_and(pilot, "hello?", "enter")
        assert app.is_running and views(app) == []


# Settings and system prompt --------------------------------------------------------------------


async def test_settings_modal_changes_temperature_and_rejects_bad_values(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, SettingsModal)
        app.screen.query_one("#temperature", Input).value = "hot"
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, SettingsModal)  # stays open, says why
        assert "Temperature must be a number" in str(app.screen.query_one(".error").render())
        app.screen.query_one("#temperature", Input).value = "0.3"
        app.screen.query_one("#candidates", Input).value = "3"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, ChatScreen)
        assert app.settings.temperature == 0.3 and app.candidate_count == 3
        assert "temp 0.3" in status(app) and "N=3" in status(app)


async def test_system_prompt_starts_a_new_conversation_and_reaches_the_model(make_app):
    backend = ScriptedBackend("Arr.")
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+r")
        assert isinstance(app.screen, TextModal)
        app.screen.query_one(TextArea).text = "You are a pirate."
        await pilot.press("ctrl+s")
        await type_and(pilot, "Hello", "enter")
        messages, _ = backend.requests[-1]
        assert messages[0] == {"role": "system", "content": "You are a pirate."}
        assert "system: You are a pirate." in status(app)


# Pairs screen ----------------------------------------------------------------------------------


def add_pair(store, question="What is the capital of France?", chosen="Paris.", rejected="Lyon."):
    return store.add_pairs([Pair([{"role": "user", "content": question}], chosen, rejected, source="picked")])[0]


async def test_pairs_screen_lists_searches_and_deletes(make_app, store):
    add_pair(store)
    keep = add_pair(store, "Largest planet?", "Jupiter.", "Mars.")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("f3")
        await pilot.pause()
        assert isinstance(app.screen, PairsScreen)
        table = app.screen.query_one(DataTable)
        assert table.row_count == 2 and table.get_row_at(0)[2] == "What is the capital of France?"  # fits at 100
        await pilot.press("slash", *"jupiter", "enter")
        await pilot.pause()
        assert table.row_count == 1 and table.get_row_at(0)[3] == "Jupiter."
        app.screen.query_one("#search", Input).value = ""
        await pilot.pause()
        await pilot.press("d")
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press("n")  # cancelling deletes nothing
        assert store.count_pairs() == 2
        await pilot.press("d", "y")
        await pilot.pause()
        assert [p.id for p in store.list_pairs()] == [keep]
        assert table.row_count == 1 and app.pair_count == 1


async def test_editing_a_pair_saves_it(make_app, store):
    pair_id = add_pair(store)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("f3", "enter")
        assert isinstance(app.screen, EditPairModal)
        app.screen.query_one("#chosen", TextArea).text = "Paris is the capital."
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert store.get_pair(pair_id).chosen == "Paris is the capital."
        assert store.get_pair(pair_id).rejected == "Lyon."


async def test_pairs_picked_in_chat_show_up_on_the_pairs_screen(make_app):
    app = make_app(ScriptedBackend("one", "two"))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("f3")
        await pilot.pause()
        assert app.screen.query_one(DataTable).row_count == 0
        await pilot.press("f2")
        await type_and(pilot, "Pick me", "ctrl+n")
        await pilot.press("1", "f3")
        await pilot.pause()
        assert app.screen.query_one(DataTable).row_count == 1


async def test_export_and_import_through_the_modal(make_app, store, tmp_path):
    add_pair(store)
    out = tmp_path / "out.jsonl"
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("f3", "x")
        app.screen.query_one("#path", Input).value = str(out)
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert out.is_file() and len(out.read_text().splitlines()) == 1
        await pilot.press("i")
        app.screen.query_one("#path", Input).value = str(out)
        await pilot.press("ctrl+s")
        await settle(pilot)
        # Its own export read back adds nothing: the pair is there already (issue 16), and it says so.
        assert store.count_pairs() == 1 and app.screen.query_one(DataTable).row_count == 1
        assert any("Imported 0 pairs" in n.message and "1 already in the store" in n.message
                   for n in app._notifications)
        await pilot.press("i")
        app.screen.query_one("#path", Input).value = str(tmp_path / "missing.jsonl")
        await pilot.press("ctrl+s")
        assert "No such file" in str(app.screen.query_one(".error").render())


# Help and palette ------------------------------------------------------------------------------


async def test_help_opens_on_f1_and_closes_on_escape(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, ChatScreen)


async def test_palette_command_runs_a_screen_action(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        titles = {command.title for command in app.get_system_commands(app.screen)}
        assert {"Send for N candidates", "Export pairs", "Show Pairs", "Sampling settings"} <= titles
        await app.run_screen_action("chat", "settings")
        await pilot.pause()
        assert isinstance(app.screen, SettingsModal)


# Helpers (plain functions) ---------------------------------------------------------------------


def test_parse_settings_accepts_valid_values_and_names_the_bad_field():
    settings, count = parse_settings("0.7", "0.9", "128", "", "3")
    assert settings == SamplingSettings(0.7, 0.9, 128, None) and count == 3
    assert parse_settings("0", "1", "1", "42", "2")[0].seed == 42
    for fields, message in [
        (("3", "0.9", "128", "", "2"), "Temperature must be between"),
        (("0.7", "0", "128", "", "2"), "Top-p"),
        (("0.7", "0.9", "12.5", "", "2"), "Max tokens must be a whole number"),
        (("0.7", "0.9", "128", "-1", "2"), "Seed must be 0 or more"),
        (("0.7", "0.9", "128", "", "5"), "Candidates must be between 2 and 4"),
    ]:
        with pytest.raises(UserError, match=message):
            parse_settings(*fields)


def test_describe_and_preview():
    assert describe(SamplingSettings(0.8, 0.95, 256, None), 2) == "temp 0.8 · top-p 0.95 · max 256 · seed random · N=2"
    assert preview("a\n b   c", 10) == "a b c"
    assert preview("abcdefghijkl", 5) == "abcd…"


def test_session_prompt_includes_the_system_prompt_only_when_set(store):
    session = ChatSession(store)
    session.add_user("hi")
    assert session.prompt() == [{"role": "user", "content": "hi"}]
    session.restart("Be brief.")
    assert session.conversation_id is None and session.turns == []
    session.add_user("hi")
    assert session.prompt()[0] == {"role": "system", "content": "Be brief."}
