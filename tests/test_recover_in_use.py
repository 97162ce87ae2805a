"""`tui-align store recover` refuses while another tui-align has the store open (issue 16): it would
replace the file under that process, whose later writes would go to the unlinked damaged one. Every open
Store holds a shared flock on `<store>.lock` (opened.py); the kernel drops it when the process ends, so a
killed app leaves nothing to clean up. `--force` recovers all the same."""

from __future__ import annotations

import signal
import subprocess
import sys

from tui_align import cli
from tui_align.paths import store_path
from tui_align.store import Store

from test_damaged_store import damage, file_bytes, fill

HOLD = "import sys; from tui_align.store import Store; s = Store(sys.argv[1]); print('open', flush=True); sys.stdin.read()"


def hold_open(path) -> subprocess.Popen:
    """Another tui-align with the store open (as the app keeps it), until its stdin closes."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout.readline() == "open\n"
    return child


def test_recover_refuses_while_another_process_has_the_store_open(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    path = store_path(home)
    fill(path, 600)
    child = hold_open(path)  # opened while sound, as an app is when a bad disk damages the file under it
    try:
        damage(path)
        before = file_bytes(path)
        assert cli.main(["--home", str(home), "store", "recover"]) == 1
        captured = capsys.readouterr()
        lines = (captured.err + captured.out).strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in captured.err, lines
        assert "is open in another tui-align" in lines[0] and f"pid {child.pid}" in lines[0] and "--force" in lines[0]
        assert file_bytes(path) == before and not [p for p in home.iterdir() if ".damaged-" in p.name]
        assert cli.main(["--home", str(home), "store", "recover", "--force"]) == 0
        assert capsys.readouterr().out.startswith(f"recovered {path}: saved ")
    finally:
        child.kill()
        child.wait()


def test_a_killed_opener_leaves_no_lock_behind(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    path = store_path(home)
    fill(path, 600)
    child = hold_open(path)
    damage(path)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert cli.main(["--home", str(home), "store", "recover"]) == 0
    assert capsys.readouterr().out.startswith(f"recovered {path}: saved ")
    Store(path).close()  # the recovered store opens, and this process's own marks don't stop a recovery

