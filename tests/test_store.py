"""The store: schema and migrations, picks becoming pairs, editing, and surviving a kill."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from tui_align import migrations
from tui_align.errors import UserError
from tui_align.pairs import Pair
from tui_align.store import CompareRecord, Store

PROMPT = [{"role": "user", "content": "Name a colour."}]


def columns(store: Store, table: str) -> list[str]:
    return [row[1] for row in store._db.execute(f"PRAGMA table_info({table})")]


def test_fresh_store_has_the_versioned_schema():
    store = Store(":memory:")
    assert store.schema_version == len(migrations.MIGRATIONS)
    assert columns(store, "pairs") == [
        "id", "pick_id", "prompt_json", "chosen", "rejected", "source", "model", "settings_json", "created_at", "updated_at",
        "identity", "import_token",
    ]
    assert columns(store, "picks")[-5:] == ["created_at", "compare_old", "compare_new", "compare_winner", "compare_blind"]


def test_migrations_run_once_and_a_new_one_applies_to_an_old_store(tmp_path, monkeypatch):
    path = tmp_path / "s.sqlite3"
    Store(path).close()

    def m999_add_note() -> str:
        return "ALTER TABLE pairs ADD COLUMN note TEXT;"

    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS + [m999_add_note])
    store = Store(path)
    assert "note" in columns(store, "pairs")
    assert store.schema_version == len(migrations.MIGRATIONS)
    store.close()
    Store(path).close()  # applying again would fail with a duplicate column


def test_a_failing_migration_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "s.sqlite3"
    Store(path).close()

    def m999_broken() -> str:
        return "CREATE TABLE half_done (x INTEGER); THIS IS NOT SQL;"

    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS + [m999_broken])
    with pytest.raises(UserError):
        Store(path)
    db = sqlite3.connect(path)
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchone() is None
    assert db.execute("SELECT COUNT(*) FROM _migrations").fetchone()[0] == len(migrations.MIGRATIONS) - 1


def test_store_uses_wal(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_corrupt_store_file_is_a_user_error(tmp_path):
    path = tmp_path / "s.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(UserError, match="Can't open the store"):
        Store(path)


def test_picking_one_of_three_makes_two_pairs_and_continues_the_conversation():
    store = Store(":memory:")
    conversation = store.new_conversation(system_prompt="Be brief.", model="m")
    store.add_message(conversation, "user", "Name a colour.")
    ids = store.record_pick(
        PROMPT, ["Red.", "Blue.", "Green."], "chosen", chosen_index=1, conversation_id=conversation,
        model="m", settings={"temperature": 0.8},
    )
    pairs = store.list_pairs()
    assert [p.id for p in pairs] == ids
    assert [(p.chosen, p.rejected) for p in pairs] == [("Blue.", "Red."), ("Blue.", "Green.")]
    assert all(p.prompt == PROMPT and p.source == "picked" and p.settings == {"temperature": 0.8} for p in pairs)
    assert store.messages(conversation)[-1] == {"role": "assistant", "content": "Blue."}


def test_a_written_answer_beats_every_candidate():
    store = Store(":memory:")
    store.record_pick(PROMPT, ["Red.", "Blue."], "written", written="Teal, a blue-green.")
    pairs = store.list_pairs()
    assert {p.rejected for p in pairs} == {"Red.", "Blue."}
    assert {p.chosen for p in pairs} == {"Teal, a blue-green."}
    assert store.counts_by_source() == {"written": 2}


def test_ties_and_skips_are_kept_as_picks_but_make_no_pairs():
    store = Store(":memory:")
    store.record_pick(PROMPT, ["Red.", "Blue."], "tie")
    store.record_pick(PROMPT, ["Red.", "Blue."], "skip")
    assert store.count_pairs() == 0
    assert store.pick_counts() == {"tie": 1, "skip": 1}


def test_compare_records_come_from_every_compare_pick_ties_included():
    store = Store(":memory:")
    first = CompareRecord("base", "run-1", "new", True)
    tie = CompareRecord("run-1", "run-2", "tie", False)
    store.record_pick(PROMPT, ["Red.", "Blue."], "chosen", chosen_index=0, settings={"seed": 1}, source="compare",
                      compare=first)
    store.record_pick(PROMPT, ["Red.", "Blue."], "chosen", chosen_index=1, settings={"seed": 2})  # the chat's
    # A chat pick that merely mentions "compare" in its settings is no compare record.
    store.record_pick([{"role": "user", "content": '"compare"'}], ["a", "b"], "skip",
                      settings={"compare": {"old": "base", "new": "run-1", "winner": "new", "blind": True}})
    store.record_pick(PROMPT, ["Red.", "Blue."], "tie", compare=tie)
    assert store.compare_records() == [first, tie]
    with pytest.raises(ValueError, match="compare winner"):
        store.record_pick(PROMPT, ["a", "b"], "tie", compare=CompareRecord("base", "run-1", "adapter", True))
    assert len(store.compare_records()) == 2


def test_migrating_an_old_store_moves_its_compare_records_into_columns(tmp_path, monkeypatch):
    """A store from before m002 kept compare records in the picks' settings_json only."""
    path = tmp_path / "s.sqlite3"
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
    Store(path).close()
    monkeypatch.undo()
    db = sqlite3.connect(path)
    rows = [
        ("chosen", {"seed": 1, "compare": {"old": "base", "new": "run-1", "winner": "new", "blind": True}}),
        ("chosen", {"seed": 2}),  # the chat's
        ("tie", {"compare": {"old": "run-1", "new": "run-2", "winner": "tie", "blind": False}}),
        ("skip", "not JSON at all"),
        ("chosen", {"compare": {"old": "run-2", "new": "run-1", "winner": "old", "blind": True}}),
        ("tie", {"compare": "a string, not a record"}),
    ]
    for outcome, settings in rows:
        db.execute("INSERT INTO picks (prompt_json, candidates_json, outcome, settings_json) VALUES ('[]', '[]', ?, ?)",
                   (outcome, settings if isinstance(settings, str) else json.dumps(settings)))
    db.commit()
    db.close()

    store = Store(path)
    assert store.schema_version == len(migrations.MIGRATIONS)
    assert store.compare_records() == [
        CompareRecord("base", "run-1", "new", True),
        CompareRecord("run-1", "run-2", "tie", False),
        CompareRecord("run-2", "run-1", "old", True),
    ]
    # The rows themselves are kept as they were: only the columns are new.
    assert store.pick_counts() == {"chosen": 3, "tie": 2, "skip": 1}
    kept = store._db.execute("SELECT settings_json FROM picks WHERE outcome = 'skip'").fetchone()[0]
    assert kept == "not JSON at all"


def test_identical_candidates_make_no_pair():
    store = Store(":memory:")
    assert store.record_pick(PROMPT, ["Red.", "Red."], "chosen", chosen_index=0) == []


def test_bad_picks_are_refused_and_store_nothing():
    store = Store(":memory:")
    with pytest.raises(ValueError):
        store.record_pick(PROMPT, ["a", "b"], "chosen", chosen_index=5)
    with pytest.raises(ValueError):
        store.record_pick(PROMPT, ["a", "b"], "written", written="  ")
    assert store.pick_counts() == {}


def test_edit_search_and_delete_pairs():
    store = Store(":memory:")
    store.add_pairs([Pair(PROMPT, "Red.", "Blue."), Pair([{"role": "user", "content": "A fruit?"}], "Apple.", "Rock.")])
    apple = store.list_pairs(search="fruit")[0]
    store.update_pair(apple.id, chosen="Pear.")
    edited = store.get_pair(apple.id)
    assert edited.chosen == "Pear." and edited.rejected == "Rock."
    assert store.list_pairs(search="rOcK")[0].id == apple.id
    store.delete_pair(apple.id)
    assert store.get_pair(apple.id) is None
    assert store.count_pairs() == 1


def test_add_pairs_is_all_or_nothing():
    store = Store(":memory:")
    with pytest.raises(sqlite3.Error):
        store.add_pairs([Pair(PROMPT, "a", "b"), Pair(PROMPT, "a", object())])
    assert store.count_pairs() == 0


def test_killing_the_process_loses_no_committed_pick(tmp_path):
    """A child commits picks in a loop and reports each; SIGKILL it; every reported pick is on disk."""
    path = tmp_path / "s.sqlite3"
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from tui_align.store import CompareRecord, Store
            store = Store({str(path)!r})
            for i in range(100000):
                store.record_pick([{{"role": "user", "content": str(i)}}], ["a", "b"], "chosen", chosen_index=0)
                print(i, flush=True)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    confirmed = -1
    deadline = time.time() + 30
    while confirmed < 30 and time.time() < deadline:
        confirmed = int(child.stdout.readline())
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert confirmed >= 30
    store = Store(path)
    assert store.count_pairs() >= confirmed + 1
    assert store.pick_counts()["chosen"] == store.count_pairs()
