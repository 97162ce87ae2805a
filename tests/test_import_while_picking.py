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

from conftest import settle, wait_until
from fakes import ScriptedBackend
from test_busy_store import write_pairs_file

SIZE = (100, 32)
IMPORTED = 3000


class GatedIdentity:
    """store.pair_identity that, in a worker thread, stops at its `after`th call until the test opens
    it: the import is then half done. It opens by itself after GIVE_UP_S, so that an import that holds
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
    gate = GatedIdentity(store_module.pair_identity, after=IMPORTED // 2)
    monkeypatch.setattr(store_module, "pair_identity", gate)
    app = make_app(ScriptedBackend("first candidate", "second candidate"))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.screen.query_one("#message", Input).value = "Say something"
        await pilot.press("ctrl+n")
        await settle(pilot)
        await pilot.press("f3", "i")
        app.screen.query_one("#path", Input).value = str(source)
        await pilot.press("ctrl+s")
        await wait_until(pilot, gate.reached.is_set, "the import is half way")
        await pilot.press("f2", "2")
        await wait_until(pilot, lambda: any(n.message == "Saved 1 pair." for n in app._notifications),
                         "the pick is shown saved", timeout=5)
        assert not gate.opened.is_set(), "the pick waited for the import"
        assert store.count_pairs() == 1 and store.list_pairs()[0].chosen == "second candidate"
        gate.opened.set()
        await settle(pilot)
        assert any(f"Imported {IMPORTED} pairs" in n.message for n in app._notifications)
        assert store.count_pairs() == IMPORTED + 1


def test_an_import_that_fails_in_a_later_chunk_stores_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "STAGE_CHUNK", 10)
    store = Store(tmp_path / "s.sqlite3")
    good = [Pair(prompt=[{"role": "user", "content": f"q{i}"}], chosen=f"good {i}", rejected=f"bad {i}", source="import")
            for i in range(35)]
    store.add_pairs(good[:5])
    broken = Pair(prompt=[{"role": "user", "content": "q"}], chosen=None, rejected="bad", source="import")
    with pytest.raises(Exception):
        store.add_pairs(good + [broken])  # a NOT NULL the fourth chunk breaks
    assert store.count_pairs() == 5
    assert store._query("SELECT COUNT(*) FROM sqlite_temp_master")[0][0] == 0  # the staging table is gone
    ids = store.add_pairs(good + good[:3])
    assert len(ids) == 30 and store.count_pairs() == 35  # the 5 and the repeats were already there
    assert [p.chosen for p in store.list_pairs()] == [p.chosen for p in good]
    assert ids == sorted(ids) and store.get_pair(ids[0]).chosen == "good 5"
