"""`tui-align store recover`: keep the damaged store file, and save what SQLite can still read into a new one.

Python's sqlite3 has no `.recover` (that is the sqlite3 shell's), so: first `VACUUM INTO` (the whole store,
when only an index or free pages are damaged), else a copy row by row, table by table, into a store made
by this version's migrations, skipping the rows on damaged pages.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import _fsync_folder, temp_path
from .errors import UserError
from .opened import Exclusive
from .store import Store, check_integrity

SIDE_FILES = ("-wal", "-shm")  # SQLite's: the WAL holds commits not yet copied into the main file
# Columns holding JSON that every later read parses: a row whose JSON doesn't parse is damaged.
JSON_COLUMNS = {"prompt_json", "candidates_json", "settings_json"}
# Past the highest rowid a scan reached, how many ids are probed one by one for rows beyond a damaged page.
PROBE_BEYOND = 10_000


@dataclass
class Recovery:
    kept: Path  # the damaged file, as it was
    how: str  # "vacuum" or "row by row"
    saved: dict[str, int] = field(default_factory=dict)  # table -> rows saved
    lost: dict[str, int] = field(default_factory=dict)  # table -> rows seen but unreadable

    def summary(self) -> str:
        saved = ", ".join(f"{n} {table}" for table, n in self.saved.items())
        lost = sum(self.lost.values())
        tail = f"; {lost} unreadable rows left behind" if lost else ""
        return f"saved {saved or 'nothing'} ({self.how}){tail}; the damaged file is kept as {self.kept}"


def recover_store(path: Path, force: bool = False) -> Recovery:
    """Replace the store at `path` with what can be read from it; the old file is kept beside it.

    Refuses (StoreInUse) while another tui-align has the store open, unless `force`: the file would be
    replaced under it, and its next write would go to the damaged one it still holds, now unlinked."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"No store at {path}: nothing to recover.")
    with Exclusive(path, force):  # and while it runs, a tui-align that starts waits for the new file
        return _recover(path)


def _recover(path: Path) -> Recovery:
    kept = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    for suffix in ("", *SIDE_FILES):
        if Path(f"{path}{suffix}").is_file():
            shutil.copy2(f"{path}{suffix}", f"{kept}{suffix}")
    fresh, reading = temp_path(path), temp_path(path)
    # Read from a second copy: opening a file replays (so writes) its WAL, and the kept one stays as it was.
    for suffix in ("", *SIDE_FILES):
        Path(f"{fresh}{suffix}").unlink(missing_ok=True)
        if Path(f"{kept}{suffix}").is_file():
            shutil.copy2(f"{kept}{suffix}", f"{reading}{suffix}")
    try:
        source = sqlite3.connect(reading)
        try:
            result = _vacuum_into(source, fresh) or _copy_rows(source, fresh)
        finally:
            source.close()
    except BaseException:
        Path(fresh).unlink(missing_ok=True)
        raise
    finally:
        for suffix in ("", *SIDE_FILES):
            Path(f"{reading}{suffix}").unlink(missing_ok=True)
    result.kept = kept
    for suffix in SIDE_FILES:  # an old WAL must not be replayed into the new file
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    os.replace(fresh, path)
    _fsync_folder(path.parent)
    return result


def _vacuum_into(source: sqlite3.Connection, fresh: Path) -> Recovery | None:
    try:
        source.execute("VACUUM INTO ?", (str(fresh),))
        check = sqlite3.connect(fresh)
        try:
            damage = check_integrity(check)
            counts = {table: check.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
                      for table in _tables(check)} if damage is None else {}
        finally:
            check.close()
    except sqlite3.DatabaseError:
        damage = "vacuum failed"
    if damage is not None:
        fresh.unlink(missing_ok=True)
        return None
    _finish(fresh)
    return Recovery(kept=Path(), how="vacuum", saved=counts)


def _copy_rows(source: sqlite3.Connection, fresh: Path) -> Recovery:
    Store(fresh, mark=False).close()
    target = sqlite3.connect(fresh, isolation_level=None)
    result = Recovery(kept=Path(), how="row by row")
    try:
        target.execute("PRAGMA foreign_keys=OFF")  # a message may outlive its damaged conversation row
        target.execute("BEGIN")
        for table in _tables(target):
            columns = _shared_columns(source, target, table)
            if not columns:
                result.saved[table], result.lost[table] = 0, 0
                continue
            saved, lost = 0, 0
            insert = f'INSERT INTO "{table}" ({", ".join(columns)}) VALUES ({", ".join("?" * len(columns))})'
            for row in _readable_rows(source, table, columns):
                if row is None or not _sound(row, columns):
                    lost += 1
                    continue
                target.execute(insert, row)
                saved += 1
            result.saved[table], result.lost[table] = saved, lost
        _drop_dangling(target)
        target.execute("COMMIT")
    finally:
        target.close()
    _finish(fresh)
    return result


def _finish(fresh: Path) -> None:
    """This version's migrations on what was saved, and one self-contained file (no WAL beside it)."""
    Store(fresh, mark=False).close()
    db = sqlite3.connect(fresh)
    try:
        db.execute("PRAGMA journal_mode=DELETE")
    finally:
        db.close()


def _tables(db: sqlite3.Connection) -> list[str]:
    """The store's own tables, in creation order (parents before the tables that point at them)."""
    return [row[0] for row in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " AND name != '_migrations' ORDER BY rowid")]


def _shared_columns(source: sqlite3.Connection, target: sqlite3.Connection, table: str) -> list[str]:
    try:
        have = {row[1] for row in source.execute(f'PRAGMA table_info("{table}")')}
    except sqlite3.DatabaseError:
        return []
    return [row[1] for row in target.execute(f'PRAGMA table_info("{table}")') if row[1] in have]


def _readable_rows(source: sqlite3.Connection, table: str, columns: list[str]):
    """Every row SQLite can read, in rowid order; None for each id known to be there but unreadable.

    A scan stops at the first damaged page; rows beyond it are found by asking for each id in turn
    (a damaged leaf loses its rows, its neighbours are still reached through the tree).
    """
    select = f'SELECT {", ".join(columns)} FROM "{table}"'
    last = 0
    try:
        for row in source.execute(f'SELECT rowid, {", ".join(columns)} FROM "{table}" ORDER BY rowid'):
            last = row[0]
            yield row[1:]
        return
    except sqlite3.DatabaseError:
        pass
    try:
        highest = source.execute(f'SELECT MAX(rowid) FROM "{table}"').fetchone()[0] or last
    except sqlite3.DatabaseError:
        highest = last + PROBE_BEYOND
    for rowid in range(last + 1, highest + 1):
        try:
            found = source.execute(f"{select} WHERE rowid = ?", (rowid,)).fetchone()
        except sqlite3.DatabaseError:
            yield None
            continue
        if found is not None:
            yield found


def _sound(row, columns: list[str]) -> bool:
    for name, value in zip(columns, row):
        if name in JSON_COLUMNS and value is not None:
            try:
                json.loads(value)
            except (TypeError, ValueError):
                return False
    return True


def _drop_dangling(db: sqlite3.Connection) -> None:
    """Links to rows that were lost: messages go with their conversation, picks and pairs keep going."""
    db.execute("DELETE FROM messages WHERE conversation_id NOT IN (SELECT id FROM conversations)")
    db.execute("UPDATE picks SET conversation_id = NULL WHERE conversation_id NOT IN (SELECT id FROM conversations)")
    db.execute("UPDATE pairs SET pick_id = NULL WHERE pick_id NOT IN (SELECT id FROM picks)")
