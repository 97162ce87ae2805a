"""A damaged store file: noticed on open before anything writes, one line everywhere, and recovered into a new
store with a copy of the damaged one kept."""

from __future__ import annotations

import os
import random
import sqlite3

import pytest

from tui_align import cli
from tui_align.pairs import Pair
from tui_align.paths import store_path
from tui_align.store import Store, StoreDamaged

from conftest import settle

SIZE = (100, 32)


def fill(path, count: int = 1500) -> None:
    store = Store(path)
    store.add_pairs([Pair(prompt=[{"role": "user", "content": f"question {i} " * 10}], chosen=f"good {i} " * 40,
                          rejected=f"bad {i} " * 40, source="imported") for i in range(count)])
    conversation = store.new_conversation("sys")
    store.add_message(conversation, "user", "hello")
    store.close()


def damage(path, seed: int = 0, size: int = 8192) -> None:
    """8 KB of random bytes into the middle half of the file, as the issue's reproduction did."""
    length = os.path.getsize(path)
    rnd = random.Random(seed)
    with open(path, "r+b") as fh:
        fh.seek(length // 4 + rnd.randrange(length // 2 - size))
        fh.write(rnd.randbytes(size))


def file_bytes(path) -> bytes:
    return b"".join(open(f"{path}{s}", "rb").read() for s in ("", "-wal") if os.path.exists(f"{path}{s}"))


@pytest.fixture
def damaged_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    fill(store_path(home))
    damage(store_path(home))
    return home


def test_opening_a_damaged_store_says_so_and_writes_nothing(damaged_home):
    path = store_path(damaged_home)
    before = file_bytes(path)
    with pytest.raises(StoreDamaged, match="is damaged .*store recover"):
        Store(path)
    assert file_bytes(path) == before


@pytest.mark.parametrize("argv", [["pairs"], ["import", "FILE"], ["export", "OUT"], ["train"]])
def test_every_command_on_a_damaged_store_is_one_line_and_leaves_it_as_it_was(damaged_home, tmp_path, capsys, argv):
    path = store_path(damaged_home)
    source = tmp_path / "p.jsonl"
    source.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    argv = [{"FILE": str(source), "OUT": str(tmp_path / "out.jsonl")}.get(a, a) for a in argv]
    before = file_bytes(path)
    code = cli.main(["--home", str(damaged_home), *argv])
    captured = capsys.readouterr()
    assert code == 1
    lines = (captured.err + captured.out).strip().splitlines()
    assert len(lines) == 1 and "damaged" in lines[0] and "Traceback" not in captured.err, lines
    assert file_bytes(path) == before
    assert not (tmp_path / "out.jsonl").exists()


def test_store_recover_keeps_the_damaged_file_and_saves_what_can_be_read(damaged_home, capsys):
    path = store_path(damaged_home)
    before = open(path, "rb").read()
    assert cli.main(["--home", str(damaged_home), "store", "recover"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"recovered {path}: saved ") and "pairs" in out and out.count("\n") == 1
    kept = [p for p in damaged_home.iterdir() if ".damaged-" in p.name and not p.name.endswith(("-wal", "-shm"))]
    assert len(kept) == 1 and kept[0].read_bytes() == before
    store = Store(path)  # opens: the check passes
    saved = store.count_pairs()
    assert 1000 < saved < 1500  # two or three damaged pages hold a few dozen pairs at most
    for pair in store.list_pairs():  # what was saved is whole
        assert pair.chosen.startswith("good ") and pair.rejected.startswith("bad ")
    assert f"{saved} pairs" in out
    store.add_pairs([Pair(prompt=[{"role": "user", "content": "new"}], chosen="a", rejected="b", source="x")])
    assert cli.main(["--home", str(damaged_home), "store", "check"]) == 0


def test_recovering_a_store_damaged_only_in_an_index_saves_everything(tmp_path, capsys):
    path = tmp_path / "s.sqlite3"
    fill(path)
    db = sqlite3.connect(path)
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'pairs_by_source'").fetchone()[0]
    page = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    with open(path, "r+b") as fh:
        fh.seek((root - 1) * page)
        fh.write(b"\x0d" + bytes(page - 1))  # the index's root page made an empty table leaf: a wrong page type
    with pytest.raises(StoreDamaged):
        Store(path)
    from tui_align.recover import recover_store

    result = recover_store(path)
    assert result.saved["pairs"] == 1500 and result.saved["messages"] == 1 and sum(result.lost.values()) == 0
    assert Store(path).count_pairs() == 1500


def test_a_file_that_is_no_database_is_kept_and_replaced_by_an_empty_store(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    store_path(home).write_bytes(b"not sqlite " * 500)
    assert cli.main(["--home", str(home), "pairs"]) == 1
    assert "store recover" in capsys.readouterr().err
    assert cli.main(["--home", str(home), "store", "recover"]) == 0
    assert "saved 0 conversations, 0 messages, 0 picks, 0 pairs" in capsys.readouterr().out
    assert Store(store_path(home)).count_pairs() == 0
    assert any(".damaged-" in p.name for p in home.iterdir())


def test_recover_on_a_sound_store_changes_nothing(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    fill(store_path(home), 5)
    assert cli.main(["--home", str(home), "store", "recover"]) == 0
    assert "not damaged" in capsys.readouterr().out
    assert not any(".damaged-" in p.name for p in home.iterdir())


async def test_a_store_damaged_while_the_app_runs_is_one_line_on_f3(make_app, store):
    fill(store.path, 300)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        damage(store.path, seed=3, size=16384)
        store._db.execute("PRAGMA cache_size=0")  # read the damaged pages from the file, not from memory
        await pilot.press("f3")
        await settle(pilot)
        errors = [n.message for n in app._notifications if n.severity == "error"]
        assert errors and all("damaged" in e and "\n" not in e for e in errors), errors
        assert app.is_running
        with pytest.raises(StoreDamaged):  # and no write goes into it
            store.add_pairs([Pair(prompt=[{"role": "user", "content": "q"}], chosen="a", rejected="b", source="x")])
