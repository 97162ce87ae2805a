"""Who has a store open: every open `Store` holds a shared flock on `<store>.lock`; a recovery takes it
exclusively, so it can tell that another tui-align (the app, an import) has the store open and refuse.

Why a flock on a file of our own, and not a pid file or SQLite's locks: the kernel drops a flock when
its process ends, kill -9 included, so there is no stale lock to clean up and no dead pid reused by a
stranger to mistake for an opener. SQLite's locks can't say it: an idle WAL connection holds no lock on
the database file, only one on a byte of the -shm file that is SQLite's internals, and a lock on the
database file itself is unsafe to take from Python (closing any descriptor of a file drops every POSIX
lock its process holds on it, SQLite's own included). Where flock doesn't exist the mark is skipped.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no marks, and a recovery can't tell (it says nothing of openers)
    fcntl = None

from .errors import UserError

LOCKS = Path("/proc/locks")  # Linux: who holds which flock, to name the other opener


class StoreInUse(UserError):
    def __init__(self, path: str, holders: list[str]):
        who = f" ({', '.join(holders)})" if holders else ""
        super().__init__(f"The store {path} is open in another tui-align{who}: recovering would replace the file"
                         " under it. Close that first, or pass --force.")


def lock_path(store: str | os.PathLike) -> Path:
    return Path(f"{store}.lock")


class OpenMark:
    """This process has the store open: a shared flock on its lock file, held until `release`.

    Waits up to `wait_s` while a recovery holds it exclusively: the store is being replaced.

    The lock file also carries the store file's stamp (stamp()) as the last tui-align to close it left it,
    written at `release` by a process that finds itself the last one; `unchanged` says whether the file
    is still exactly that, which lets the open skip reading every page (store.check_integrity)."""

    def __init__(self, store: str | os.PathLike, wait_s: float):
        self.store, self.fd = str(store), None
        #: another tui-align had the store open when this one opened it
        self.shared = False
        self.left: str = ""  # the stamp the last one to close the store wrote
        self._exclusive = False
        if fcntl is None:
            return
        try:
            self.fd = os.open(lock_path(store), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:  # a folder it can't write to: no mark, and SQLite says what is wrong with the path
            return
        try:
            # Alone: then the stamp can't change under us, and no one else's import can be under way
            # until `share` (the open may delete abandoned ones meanwhile: store.py).
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._exclusive = True
            self.left = os.pread(self.fd, 200, 0).decode(errors="replace")
        except BlockingIOError:
            self.shared = True
            self.share(wait_s)

    @property
    def alone(self) -> bool:
        """This process holds the store alone, until `share`."""
        return self.fd is not None and self._exclusive

    def share(self, wait_s: float) -> None:
        """Let other tui-aligns open the store too (the open is done); waits up to `wait_s` while a recovery
        holds it exclusively, the store being replaced."""
        if self.fd is None:
            return
        deadline, pause = time.monotonic() + wait_s, 0.01
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() + pause > deadline:
                    os.close(self.fd)
                    self.fd = None
                    raise UserError(f"The store {self.store} is being recovered by another tui-align; try again"
                                    " when it is done.") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.5)
        self._exclusive = False

    @property
    def unchanged(self) -> bool:
        """The store file is as the last tui-align to close it left it (never true for a new store)."""
        return bool(self.left) and not self.shared and self.left == stamp(self.store)

    def release(self, closed_cleanly: bool = True) -> None:
        """Drop the mark; the last one out stamps the file. closed_cleanly=False (the store was found damaged,
        or the open failed): clear the stamp instead."""
        if self.fd is None:
            return
        try:
            if not closed_cleanly:  # found damaged, or never opened: the next open must check, whoever it is
                os.ftruncate(self.fd, 0)
            else:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                now = stamp(self.store).encode()
                os.ftruncate(self.fd, 0)
                os.pwrite(self.fd, now, 0)
        except (BlockingIOError, OSError):
            pass  # another one has it open (it stamps when it closes), or the stamp can't be written: no skip
        finally:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __del__(self):
        # a Store dropped without close(): let others see it gone, but stamp nothing (it may not have closed)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def stamp(store: str | os.PathLike) -> str:
    """What says the store file hasn't been touched: inode, size, and change time (which every write moves
    and no one can set back), and no WAL beside it (committed writes not yet in the file); "" when there
    is a WAL or no file."""
    try:
        st = os.stat(store)
    except OSError:
        return ""
    if os.path.exists(f"{store}-wal"):
        return ""
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_ctime_ns}:{st.st_mtime_ns}"


class Exclusive:
    """The store to this process alone while it is replaced (`with Exclusive(path, force):`): StoreInUse
    when another process has it open, unless `force` (then it goes on without the lock)."""

    def __init__(self, store: str | os.PathLike, force: bool = False):
        self.store, self.force, self.fd = store, force, None

    def __enter__(self) -> "Exclusive":
        if fcntl is None:
            return self
        fd = os.open(lock_path(self.store), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holders = openers(fd)
            os.close(fd)
            if not self.force:
                raise StoreInUse(str(self.store), holders) from None
            return self
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def openers(fd: int) -> list[str]:
    """'pid N: command' of each other process with a flock on the file of `fd` (Linux; else [])."""
    stat = os.fstat(fd)
    # /proc/locks names a file major:minor:inode, the device numbers in hex
    key = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    try:
        lines = LOCKS.read_text().splitlines()
    except OSError:
        return []
    pids = []
    for line in lines:
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK" or fields[5] != key:
            continue  # "->" marks a waiter, not a holder
        if fields[4].isdigit() and int(fields[4]) != os.getpid() and fields[4] not in pids:
            pids.append(fields[4])
    return [f"pid {pid}: {_command(pid)}" if _command(pid) else f"pid {pid}" for pid in pids]


def _command(pid: str) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
    if len(words) > 2 and words[1:3] == ["-m", "tui_align.cli"]:
        words = ["tui-align", *words[3:]]
    elif words:
        words[0] = os.path.basename(words[0])
    return " ".join(words)[:80]
