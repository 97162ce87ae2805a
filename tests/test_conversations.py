"""Conversations as a thing the user can find again: the store's list, the chat screen's list (ctrl+o) to
reopen, rename and delete them, and the status line's context length against training's max length."""

from __future__ import annotations

from datetime import datetime, timezone

from textual.widgets import DataTable, TextArea

from tui_align.app.context_size import TRAIN_MAX_LENGTH, ContextSize
from tui_align.app.screens.chat import ChatScreen
from tui_align.app.screens.confirm import ConfirmModal
from tui_align.app.screens.conversations import ConversationsModal, ago
from tui_align.app.widgets.status_bar import StatusBar
from tui_align.training.config import TrainConfig

from conftest import settle, type_and, views
from fakes import ScriptedBackend

SIZE = (120, 32)




def status(app) -> str:
    return str(app.get_screen("chat").query_one(StatusBar).render())


# The store ---------------------------------------------------------------------------------------


def test_the_list_counts_each_conversations_pairs_and_deleting_one_keeps_them(store):
    first = store.new_conversation()
    store.add_message(first, "user", "Translate 'cat' to Spanish")
    store.record_pick([{"role": "user", "content": "Translate 'cat' to Spanish"}], ["gato", "perro", "gata"],
                      "chosen", chosen_index=0, conversation_id=first)
    second = store.new_conversation("Be brief.")
    store.add_message(second, "user", "Capital of France?")
    listed = {chat.id: chat for chat in store.conversations()}
    assert listed[first].pairs == 2 and listed[first].messages == 2  # the winner joined the conversation
    assert listed[second].pairs == 0 and listed[second].system_prompt == "Be brief."
    assert listed[first].title == "Translate 'cat' to Spanish"  # no name given: its first message
    assert [chat.id for chat in store.conversations()][0] == second  # the one used last comes first

    store.rename_conversation(first, "  Spanish words ")
    assert store.get_conversation(first).title == "Spanish words"
    store.rename_conversation(first, "")
    assert store.get_conversation(first).title == "Translate 'cat' to Spanish"

    store.delete_conversation(first)
    assert store.get_conversation(first) is None and store.messages(first) == []
    assert store.count_pairs() == 2  # the pairs are training data: they stay


def test_last_used_reads_as_an_age():
    now = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
    assert ago("2026-12-02T11:59:30.000Z", now) == "just now"
    assert ago("2026-12-02T11:55:00.000Z", now) == "5 min ago"
    assert ago("2026-12-02T09:00:00.000Z", now) == "3 h ago"
    assert ago("2026-12-01T11:00:00.000Z", now) == "1 day ago" and ago("2026-11-20T12:00:00Z", now) == "12 days ago"


# The chat screen's list --------------------------------------------------------------------------


async def test_the_list_reopens_a_conversation_and_a_new_pick_lands_in_it(make_app, store):
    backend = ScriptedBackend("gato", "Paris.")
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await type_and(pilot, "Translate 'cat' to Spanish", "enter")
        spanish = app.screen.session.conversation_id
        await pilot.press("ctrl+l")
        await type_and(pilot, "Capital of France?", "enter")
        assert app.screen.session.conversation_id != spanish

        await pilot.press("ctrl+o")
        assert isinstance(app.screen, ConversationsModal)
        table = app.screen.query_one(DataTable)
        assert table.row_count == 2
        assert "Capital of France?" in str(table.get_row_at(0)[0])  # newest first, the open one marked
        await pilot.press("down", "enter")
        await settle(pilot)
        assert isinstance(app.screen, ChatScreen) and app.screen.session.conversation_id == spanish
        assert views(app) == [("user", "Translate 'cat' to Spanish"), ("assistant", "gato")]

        backend.enqueue("gata", "el gato")
        await type_and(pilot, "And 'the cat'?", "ctrl+n")
        await pilot.press("2")
        await settle(pilot)
        pair = store.list_pairs()[0]
        assert pair.prompt == [{"role": "user", "content": "Translate 'cat' to Spanish"},
                               {"role": "assistant", "content": "gato"},
                               {"role": "user", "content": "And 'the cat'?"}]
        assert store.messages(spanish)[-1] == {"role": "assistant", "content": "el gato"}
        assert store.get_conversation(spanish).pairs == 1

        await pilot.press("ctrl+o")
        table = app.screen.query_one(DataTable)
        assert table.get_row_at(0)[2] == "1"  # its pair count, and it is the one used last now


async def test_rename_and_delete_from_the_list(make_app, store):
    app = make_app(ScriptedBackend("Hello!"))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await type_and(pilot, "Hi there", "enter")
        chat = app.screen.session.conversation_id
        await pilot.press("ctrl+o", "r")
        app.screen.query_one(TextArea).text = "Greetings"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "Greetings" in str(app.screen.query_one(DataTable).get_row_at(0)[0])
        assert store.get_conversation(chat).title == "Greetings"

        await pilot.press("d")
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press("y")
        await pilot.pause()
        assert app.screen.query_one(DataTable).row_count == 0
        await pilot.press("escape")
        await settle(pilot)
        # The conversation on screen was the one deleted: the chat starts afresh instead of writing into it.
        assert app.screen.session.conversation_id is None and views(app) == []


async def test_new_chat_is_in_the_footer(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        shown = {key: active.binding.description for key, active in app.screen.active_bindings.items()
                 if active.binding.show and active.enabled}
        assert shown.get("ctrl+l") == "New chat" and shown.get("ctrl+o") == "Chats"


# The context's length ----------------------------------------------------------------------------


def test_the_max_length_is_trainings_own_default():
    assert TRAIN_MAX_LENGTH == TrainConfig().max_length
    assert not ContextSize(40, tokens=100, answer_tokens=100).too_long
    assert ContextSize(40, tokens=200, answer_tokens=100).too_long
    assert ContextSize(40).text() == "context 40 chars" and not ContextSize(40).too_long


async def test_the_status_line_counts_the_context_and_warns_before_a_pair_would_not_fit(make_app):
    long_answer = " ".join(["word"] * (TRAIN_MAX_LENGTH // 2))
    app = make_app(ScriptedBackend("Short answer here.", long_answer))
    async with app.run_test(size=(200, 32)) as pilot:
        await settle(pilot)
        assert f"context 0/{TRAIN_MAX_LENGTH} tokens" in status(app)
        await type_and(pilot, "Say hi", "enter")
        assert f"context 5/{TRAIN_MAX_LENGTH} tokens" in status(app)  # 2 words asked, 3 answered
        await type_and(pilot, "Now a long one", "enter")
        assert "the next pair won't fit" in status(app) and "ctrl+l new chat" in status(app)
        await pilot.press("ctrl+l")
        await settle(pilot)
        assert f"context 0/{TRAIN_MAX_LENGTH} tokens" in status(app)
