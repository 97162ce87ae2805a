"""The open's integrity check reads every page: 7.5 s cold on a 100k-pair store (docs/benchmarks.md,
section 7). So it runs only when the file may have changed since a tui-align last had it open: not after
a clean close that left it as it is, nor while another tui-align has it open (store.OPEN_CHECK)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tui_align import cli, opened
from tui_align.pairs import Pair
from tui_align.paths import store_path
from tui_align.store import Store, StoreDamaged

from test_damaged_store import damage, fill
from test_recover_in_use import hold_open

WRITE_AND_WAIT = ("import sys; from tui_align.store import Store; from tui_align.pairs import Pair; s = Store(sys.argv[1]);"
                  " s.add_pairs([Pair(prompt=[{'role': 'user', 'content': 'late'}], chosen='a', rejected='b', source='x')]);"
                  " print('written', flush=True); sys.stdin.read()")


def test_a_store_closed_cleanly_opens_without_the_check_and_one_changed_since_is_checked(tmp_path):
    path = tmp_path / "s.sqlite3"
    fill(path, 300)
    store = Store(path)
    assert not store.checked and store.count_pairs() == 300
    store.close()
    damage(path)  # bytes written into the file: its change time moves
    with pytest.raises(StoreDamaged):
        Store(path)


def test_a_writer_killed_mid_session_makes_the_next_open_check(tmp_path):
    path = tmp_path / "s.sqlite3"
    fill(path, 300)
    child = subprocess.Popen([sys.executable, "-c", WRITE_AND_WAIT, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "written\n"
    child.send_signal(signal.SIGKILL)
    child.wait()
    store = Store(path)  # its commit is in the WAL it left, the file itself maybe untouched
    assert store.checked and store.count_pairs() == 301
    store.close()
    assert not Store(path).checked  # closed cleanly now


def test_a_store_another_tui_align_has_open_is_not_checked_again(tmp_path):
    path = tmp_path / "s.sqlite3"
    fill(path, 300)
    damage(path)  # the first open checks (the file changed since it was closed) ...
    with pytest.raises(StoreDamaged):
        Store(path)
    path.unlink()
    fill(path, 300)
    Store(path, check=True).close()
    child = hold_open(path)
    try:
        assert not Store(path).checked  # ... the second, while the first has it open, doesn't
    finally:
        child.kill()
        child.wait()


def test_store_check_and_recover_always_check(tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    path = store_path(home)
    fill(path, 300)
    monkeypatch.setattr(opened, "stamp", lambda store: "unchanged")  # a disk gone bad under an unchanged file
    Store(path).close()
    damage(path)
    trusting = Store(path)
    assert not trusting.checked  # the plain open trusts the stamp (SQLite finds the pages when read)
    trusting.close()
    assert cli.main(["--home", str(home), "store", "check"]) == 1
    assert "damaged" in capsys.readouterr().err
    with pytest.raises(StoreDamaged):
        Store(path)  # the check that found it cleared the stamp: every later open checks until recovered
    assert cli.main(["--home", str(home), "store", "recover"]) == 0
    store = Store(path)
    store.add_pairs([Pair(prompt=[{"role": "user", "content": "new"}], chosen="a", rejected="b", source="x")])
    store.close()
