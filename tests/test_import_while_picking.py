"""A big import in the app doesn't hold up a pick (issue 16): the import stages its rows on a connection
of its own and moves them into the store in one short transaction, so a pick made while it runs is
stored, and shown saved, before the import ends, and the import still lands whole (or not at all)."""

from __future__ import annotations

import threading

import pytest
from textual.widgets import Input

from tui_align import store as store_module
from tui_align.pairs import Pair
from tui_align.store import Store

from conftest import settle, type_and, wait_until
from fakes import ScriptedBackend
from test_busy_store import write_pairs_file

SIZE = (100, 32)
IMPORTED = 3000


class GatedIdentity:
    """store.pair_identity that, in a worker thread, stops at its `after`th call until the test opens
    it: the import is then part way. It opens by itself after GIVE_UP_S, so that an import that holds
    up the UI thread (the bug) makes the test fail instead of hang."""

    GIVE_UP_S = 20.0

    def __init__(self, real, after: int):
        self.real, self.after, self.calls = real, after, 0
        self.reached, self.opened = threading.Event(), threading.Event()

    def __call__(self, *args):
        if threading.current_thread() is not threading.main_thread():
            self.calls += 1
            if self.calls == self.after:
                self.reached.set()
                self.opened.wait(self.GIVE_UP_S)
        return self.real(*args)


async def test_a_pick_made_during_a_big_import_is_stored_before_the_import_ends(make_app, store, tmp_path,
                                                                                monkeypatch):
    source = tmp_path / "big.jsonl"
    write_pairs_file(source, IMPORTED)
    gate = GatedIdentity(store_module.pair_identity, after=2 * store_module.STAGE_CHUNK + 1)
    monkeypatch.setattr(store_module, "pair_identity", gate)
    app = make_app(ScriptedBackend("first candidate", "second candidate"))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await type_and(pilot, "Say something", "ctrl+n")
        await pilot.press("f3", "i")
        app.screen.query_one("#path", Input).value = str(source)
        await pilot.press("ctrl+s")
        await wait_until(pilot, gate.reached.is_set, "the import is half way")
        # two chunks committed already, out of sight: the pick goes between the import's transactions
        committed = store._db.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
        assert committed == 2 * store_module.STAGE_CHUNK and store.count_pairs() == 0
        await pilot.press("f2", "2")
        await wait_until(pilot, lambda: any(n.message == "Saved 1 pair." for n in app._notifications),
                         "the pick is shown saved", timeout=5)
        assert not gate.opened.is_set(), "the pick waited for the import"
        assert store.count_pairs() == 1 and store.list_pairs()[0].chosen == "second candidate"
        gate.opened.set()
        await settle(pilot)
        assert any(f"Imported {IMPORTED} pairs" in n.message for n in app._notifications)
        assert store.count_pairs() == IMPORTED + 1


def raw_count(store: Store, table: str = "pairs") -> int:
    return store._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def questions(count: int) -> list[Pair]:
    return [Pair(prompt=[{"role": "user", "content": f"q{i}"}], chosen=f"good {i}", rejected=f"bad {i}", source="import")
            for i in range(count)]


def test_an_import_that_fails_in_a_later_chunk_stores_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "STAGE_CHUNK", 10)
    store = Store(tmp_path / "s.sqlite3")
    good = questions(35)
    store.add_pairs(good[:5])
    broken = Pair(prompt=[{"role": "user", "content": "q"}], chosen=None, rejected="bad", source="import")
    with pytest.raises(Exception):
        store.add_pairs(good + [broken])  # a NOT NULL the fourth chunk breaks, after three committed
    assert store.count_pairs() == 5 and raw_count(store) == 5 and raw_count(store, "pending_imports") == 0
    ids = store.add_pairs(good + good[:3])
    assert len(ids) == 30 and store.count_pairs() == 35  # the 5 and the repeats were already there
    assert [p.chosen for p in store.list_pairs()] == [p.chosen for p in good]
    assert ids == sorted(ids) and store.get_pair(ids[0]).chosen == "good 5"


def test_a_killed_imports_rows_stay_hidden_and_the_next_lone_open_deletes_them(tmp_path, monkeypatch):
    from test_recover_in_use import hold_open

    monkeypatch.setattr(store_module, "STAGE_CHUNK", 10)
    path = tmp_path / "s.sqlite3"
    store = Store(path)
    store.add_pairs(questions(3))
    landing = store._transaction

    def killed_before_landing(*args):  # the process dies before the import's last transaction
        if store._db.execute("SELECT COUNT(*) FROM pairs").fetchone()[0] >= 23:
            raise KeyboardInterrupt
        return landing(*args)

    child = hold_open(path)  # the app, say, has the store open too
    try:
        monkeypatch.setattr(store, "_transaction", killed_before_landing)
        monkeypatch.setattr(store, "_drop_import", lambda token: None)  # as a kill -9 leaves it
        with pytest.raises(KeyboardInterrupt):
            store.add_pairs(questions(40)[3:])
        monkeypatch.undo()
        assert raw_count(store) == 23 and store.count_pairs() == 3 and len(store.list_pairs()) == 3
        assert store.counts_by_source() == {"import": 3} and store.get_pair(23) is None
        store.close()
        other = Store(path)  # not alone: the hidden rows could be an import under way in that process
        assert raw_count(other) == 23 and other.count_pairs() == 3
        other.close()
    finally:
        child.kill()
        child.wait()
    alone = Store(path)
    assert raw_count(alone) == 3 and raw_count(alone, "pending_imports") == 0
    assert len(alone.add_pairs(questions(40))) == 37  # the dropped ones import again
