"""The SQLite store: conversations, every pick, and the preference pairs made from them.

WAL mode and one transaction per user action: a pick is on disk, with its pairs, before
`record_pick` returns, so killing the app at any moment loses nothing committed.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from .errors import UserError
from .identity import pair_identity
from .migrations import migrate, schema_version
from .opened import OpenMark
from .pairs import Message, Pair

log = logging.getLogger(__name__)

PICK_OUTCOMES = ("chosen", "written", "tie", "skip")
# How long a write waits for another process's write (an import in a second tui-align) before it gives
# up: long for the CLI, which has nothing else to do; the app lowers it (it retries on a timer instead).
WRITE_WAIT_S = 30.0
RECOVER_HINT = "`tui-align store recover` keeps a copy and saves what can be read into a new store"
# SQLite's own busy handler on every statement: enough to ride out a commit, short enough that a
# read on the UI thread never hangs; longer waits are the retry loop in _begin, outside self._lock.
STATEMENT_WAIT_MS = 20
# Pairs an import commits at a time (add_pairs): what a pick made meanwhile may wait for, tens of ms.
STAGE_CHUNK = 500
# The pairs every read sees: not those of an import still under way (m005).
VISIBLE = "(import_token IS NULL OR import_token NOT IN (SELECT token FROM pending_imports))"


class StoreBusy(UserError):
    """Another process held the store's write lock for longer than this write waits; nothing was written."""

    def __init__(self, path: str, waited_s: float):
        super().__init__(f"The store {path} is busy: another tui-align has been writing to it for {waited_s:g} s;"
                         " nothing was saved, try again when it is done.")
        self.waited_s = waited_s


class StoreDamaged(UserError):
    """SQLite found the store file damaged; nothing more is written to it."""

    def __init__(self, path: str, detail: str):
        super().__init__(f"The store {path} is damaged ({detail}); nothing was written to it. Run"
                         " `tui-align store recover` to keep a copy and save what can be read into a new store.")
        self.detail = detail


# When the open runs check_integrity (OPEN_CHECK): it reads every page, and on a 100k-pair (420 MB) store
# that is 0.9 s with the file in the page cache but 7.5 s from the disk (docs/benchmarks.md, section 7),
# a wait at every start. So a store is checked on open unless its file is exactly as the last tui-align
# to close it left it (inode, size, change time, no WAL: opened.stamp), or another tui-align has it open
# now (it was checked when the first one opened it). Anything that wrote to the file since (a crash
# mid-write leaves a WAL; bytes written into it move its change time; a copy is a new inode) makes the
# next open check it. What the skip can miss is a disk that goes bad under an unchanged file; SQLite
# still finds such a page when a read meets it, and then the store refuses writes (Store.damage).
OPEN_CHECK = "unless unchanged since a clean close, or open in another tui-align"


def check_integrity(db: sqlite3.Connection) -> str | None:
    """None when SQLite's quick check passes, else its first complaint on one line.

    quick_check, not integrity_check: it reads every page but skips matching indexes to tables, which
    is what a few bytes overwritten by a crash or a bad disk break.
    """
    try:
        rows = db.execute("PRAGMA quick_check(1)").fetchall()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    first = rows[0][0] if rows else "no answer from the check"
    return None if first == "ok" else " ".join(first.replace("*** in database main ***", "").split())


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or "malformed" in str(exc) \
        or "Could not decode" in str(exc)  # bytes in a text column that a damaged page put there


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or \
        "locked" in str(exc) or "busy" in str(exc)


@dataclass(frozen=True)
class ConversationSummary:
    """One stored conversation as the conversations list shows it: its title (the user's name for it, else
    its first message), how many messages it has and how many pairs its picks made, and when it was last used."""

    id: int
    title: str
    system_prompt: str
    messages: int
    pairs: int
    last_used: str


@dataclass(frozen=True)
class CompareRecord:
    """What a compare-screen pick compared: the old side ("base" or a run), the new side (a run), the
    winner ("new", "old" or "tie") and whether the user picked blind."""

    old: str
    new: str
    winner: str
    blind: bool


class Store:
    def __init__(self, path: str | Path = ":memory:", write_wait_s: float | None = None, check: bool | None = None,
                 mark: bool = True):
        """check: the open's integrity check (check_integrity). None: when the file may have changed since
        a tui-align last had it open (see OPEN_CHECK); True: always (`store check`, `store recover`);
        False: never (own_connection: a second connection to a store this process has open).
        mark=False leaves no sign that the store is open (opened.py): for a recovery's scratch copies,
        which no one else can know of."""
        self.path = str(path)
        #: seconds a write waits for another process's write before StoreBusy (see WRITE_WAIT_S)
        self.write_wait_s = write_wait_s = WRITE_WAIT_S if write_wait_s is None else write_wait_s
        self._mark = OpenMark(self.path, write_wait_s) if mark and self.path != ":memory:" else None
        if check is None:
            check = not (self._mark is not None and (self._mark.shared or self._mark.unchanged))
        #: whether this open ran check_integrity
        self.checked = check
        try:
            self._connect(write_wait_s, check)
            if self._mark is not None:
                self._mark.share(write_wait_s)
        except BaseException:
            self._release_mark(closed_cleanly=False)
            raise
        self._lock = threading.RLock()
        #: what SQLite said when a statement found the file damaged mid-session (then writes are refused)
        self.damage: str | None = None

    def _release_mark(self, closed_cleanly: bool = True) -> None:
        if self._mark is not None:
            self._mark.release(closed_cleanly)

    def _connect(self, write_wait_s: float, check: bool) -> None:
        deadline, pause = time.monotonic() + write_wait_s, 0.01
        while True:
            try:
                self._db = self._open(write_wait_s, check)
                break
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise UserError(f"Can't open the store {self.path}: {exc}; {RECOVER_HINT}") from exc
                # SQLite answers busy at once, without waiting, where waiting could deadlock: two processes
                # creating one new store, each with a read lock and wanting to write. Start over.
                if time.monotonic() + pause > deadline:
                    raise StoreBusy(self.path, write_wait_s) from exc
                time.sleep(pause)
                pause = min(pause * 2, 0.5)
            except sqlite3.DatabaseError as exc:
                raise UserError(f"Can't open the store {self.path}: {exc}; {RECOVER_HINT}") from exc

    def _open(self, write_wait_s: float, check: bool) -> sqlite3.Connection:
        # Workers (generation, import) and the UI thread share one connection; the lock
        # serialises them, which SQLite needs for a shared connection anyway.
        # Opening waits the whole write_wait_s: a migration may have to wait for another writer.
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=write_wait_s)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            # Before anything writes (a migration, an import): a damaged file is left as it is for recovery.
            damage = check_integrity(db) if check else None
            if damage is not None:
                raise StoreDamaged(self.path, damage)
            migrate(db)
            if self._mark is not None and self._mark.alone:
                self._drop_abandoned(db)
            db.execute(f"PRAGMA busy_timeout={STATEMENT_WAIT_MS}")
        except BaseException:
            db.close()
            raise
        return db

    @property
    def schema_version(self) -> int:
        """How many migrations this store has applied."""
        return schema_version(self._db)

    def close(self) -> None:
        self._db.close()  # the last connection's close moves the WAL into the file: then it can be stamped
        self._release_mark(closed_cleanly=self.damage is None)

    @contextmanager
    def _transaction(self, wait_s: float | None = None) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at BEGIN (IMMEDIATE) so that a busy store fails before anything is
        done rather than at COMMIT; waits up to `wait_s` (default write_wait_s) for another writer."""
        self._begin(self.write_wait_s if wait_s is None else wait_s)
        try:
            try:
                yield self._db
            except sqlite3.DatabaseError as exc:
                self._db.execute("ROLLBACK")
                self._raise_for(exc)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                self._db.execute("ROLLBACK")
                if _is_busy(exc):
                    raise StoreBusy(self.path, self.write_wait_s) from exc
                raise UserError(f"Couldn't save to {self.path}: {exc}") from exc
        finally:
            self._lock.release()

    def _begin(self, wait_s: float) -> None:
        """BEGIN IMMEDIATE, retried with backoff while another process writes; returns holding self._lock.

        The waiting happens with self._lock released, so this process's readers (the UI thread) go on.
        """
        if self.damage is not None:
            raise StoreDamaged(self.path, self.damage)
        deadline = time.monotonic() + wait_s
        pause = 0.01
        while True:
            self._lock.acquire()
            try:
                self._db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                self._lock.release()
                if not _is_busy(exc):
                    raise UserError(f"Couldn't save to {self.path}: {exc}") from exc
            except BaseException:
                self._lock.release()
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreBusy(self.path, wait_s)
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.5)

    def _query(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                cursor = self._db.execute(sql, params)
                cursor.row_factory = sqlite3.Row
                return cursor.fetchall()
            except sqlite3.OperationalError as exc:
                if _is_busy(exc):
                    raise StoreBusy(self.path, STATEMENT_WAIT_MS / 1000) from exc
                self._raise_for(exc)
            except sqlite3.DatabaseError as exc:
                self._raise_for(exc)

    def _raise_for(self, exc: sqlite3.DatabaseError):
        """Raise what a failed statement means: damage to the file (then no more writes this session), or
        the error as it was (a constraint, a bug), a full disk and the like as one line."""
        if _is_damage(exc):
            self.damage = str(exc).splitlines()[0][:200]
            raise StoreDamaged(self.path, self.damage) from exc
        if isinstance(exc, sqlite3.OperationalError) and not isinstance(exc, sqlite3.ProgrammingError):
            raise UserError(f"Couldn't use the store {self.path}: {exc}") from exc
        raise exc

    # Conversations ---------------------------------------------------------------------

    def new_conversation(self, system_prompt: str = "", model: str | None = None) -> int:
        with self._transaction() as db:
            return db.execute(
                "INSERT INTO conversations (system_prompt, model) VALUES (?, ?)", (system_prompt, model)
            ).lastrowid

    def add_message(self, conversation_id: int, role: str, content: str) -> int:
        with self._transaction() as db:
            return self._append_message(db, conversation_id, role, content)

    @staticmethod
    def _append_message(db: sqlite3.Connection, conversation_id: int, role: str, content: str) -> int:
        position = db.execute(
            "SELECT COALESCE(MAX(position) + 1, 0) FROM messages WHERE conversation_id = ?", (conversation_id,)
        ).fetchone()[0]
        return db.execute(
            "INSERT INTO messages (conversation_id, position, role, content) VALUES (?, ?, ?, ?)",
            (conversation_id, position, role, content),
        ).lastrowid

    def messages(self, conversation_id: int) -> list[Message]:
        rows = self._query(
            "SELECT role, content FROM messages WHERE conversation_id = ? ORDER BY position", (conversation_id,)
        )
        return [{"role": row["role"], "content": row["content"]} for row in rows]

    def conversations(self) -> list[ConversationSummary]:
        """Every conversation, the one used last first."""
        return [_conversation_from_row(row) for row in self._query(CONVERSATION_SUMMARY + " ORDER BY last_used DESC, c.id DESC")]

    def get_conversation(self, conversation_id: int) -> ConversationSummary | None:
        rows = self._query(CONVERSATION_SUMMARY + " HAVING c.id = ?", (conversation_id,))
        return _conversation_from_row(rows[0]) if rows else None

    def rename_conversation(self, conversation_id: int, title: str) -> None:
        """Name the conversation; an empty title goes back to showing its first message."""
        with self._transaction() as db:
            db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title.strip() or None, conversation_id))

    def delete_conversation(self, conversation_id: int) -> None:
        """Delete the conversation and its messages. Its pairs stay: they are the user's training data, and
        their prompts carry the whole context on their own (the picks lose only the link back)."""
        with self._transaction() as db:
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # Picks -------------------------------------------------------------------------------

    def record_pick(
        self,
        prompt: list[Message],
        candidates: list[str],
        outcome: str,
        *,
        chosen_index: int | None = None,
        written: str | None = None,
        conversation_id: int | None = None,
        model: str | None = None,
        settings: dict | None = None,
        source: str | None = None,
        compare: CompareRecord | None = None,
    ) -> list[int]:
        """Store one pick and the pairs it implies, in one transaction; returns the new pair ids.

        chosen: candidates[chosen_index] beats every other candidate.
        written: the user's own answer beats every candidate.
        tie, skip: recorded, no pair.
        `compare`: the two models of a compare-screen pick, kept with the pick for the tally.
        The winning answer is appended to the conversation, so it continues from there.
        """
        if outcome not in PICK_OUTCOMES:
            raise ValueError(f"unknown pick outcome {outcome!r}")
        if compare is not None and compare.winner not in ("new", "old", "tie"):
            raise ValueError(f"unknown compare winner {compare.winner!r}")
        if outcome == "chosen":
            if chosen_index is None or not 0 <= chosen_index < len(candidates):
                raise ValueError("a 'chosen' pick needs a valid chosen_index")
            winner = candidates[chosen_index]
            losers = [c for i, c in enumerate(candidates) if i != chosen_index]
            source = source or "picked"
        elif outcome == "written":
            if not written or not written.strip():
                raise ValueError("a 'written' pick needs the written answer")
            winner, losers = written, list(candidates)
            source = source or "written"
        else:
            winner, losers = None, []
        settings_json = json.dumps(settings or {})
        prompt_json = json.dumps(prompt)
        sides = (compare.old, compare.new, compare.winner, int(compare.blind)) if compare else (None,) * 4
        with self._transaction() as db:
            pick_id = db.execute(
                "INSERT INTO picks (conversation_id, prompt_json, candidates_json, outcome, chosen_index,"
                " written, model, settings_json, compare_old, compare_new, compare_winner, compare_blind)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, prompt_json, json.dumps(candidates), outcome, chosen_index, written, model,
                 settings_json, *sides),
            ).lastrowid
            # A pick always stores its pairs; one already stored (the same pick made twice) carries no
            # identity, so the first copy keeps it and a re-import still finds it.
            pair_ids = [
                db.execute(
                    "INSERT INTO pairs (pick_id, prompt_json, chosen, rejected, source, model, settings_json, identity)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (pick_id, prompt_json, winner, loser, source, model, settings_json,
                     self._free_identity(db, pair_identity(prompt, winner, loser))),
                ).lastrowid
                for loser in losers
                if loser != winner
            ]
            if conversation_id is not None and winner is not None:
                self._append_message(db, conversation_id, "assistant", winner)
        return pair_ids

    def pick_counts(self) -> dict[str, int]:
        rows = self._query("SELECT outcome, COUNT(*) AS n FROM picks GROUP BY outcome")
        return {row["outcome"]: row["n"] for row in rows}

    def compare_records(self) -> list[CompareRecord]:
        """Every pick made on the compare screen, oldest first, ties included (they store no pair, so the
        picks, not the pairs, are what a tally is rebuilt from)."""
        rows = self._query("SELECT compare_old, compare_new, compare_winner, compare_blind FROM picks"
                           " WHERE compare_new IS NOT NULL ORDER BY id")
        return [CompareRecord(row["compare_old"], row["compare_new"], row["compare_winner"], bool(row["compare_blind"]))
                for row in rows]

    # Pairs -------------------------------------------------------------------------------

    def add_pairs(self, pairs: Sequence[Pair], wait_s: float | None = None) -> list[int]:
        """Insert the pairs not stored yet (by content: identity.py), all or none; returns the new ids, so
        len(pairs) - len(ids) were already there (or repeated within `pairs`). Waits up to `wait_s` for
        another writer (default write_wait_s).

        A big import must not hold the write lock while it hashes and inserts: a pick in the app, on this
        connection or another process's, would wait for all of it. So it commits STAGE_CHUNK pairs at a
        time, the lock free between chunks, each row carrying the import's token; while the token is in
        pending_imports no read sees those rows (VISIBLE), and the import lands all at once when a last
        small transaction deletes it. A failure deletes the rows it wrote; a kill leaves them hidden,
        for the next open that has the store to itself to delete (_drop_abandoned)."""
        if not pairs:
            return []
        token = secrets.randbits(62)
        with self._transaction(wait_s) as db:
            db.execute("INSERT INTO pending_imports (token) VALUES (?)", (token,))
        added: list[int] = []
        try:
            for start in range(0, len(pairs), STAGE_CHUNK):
                # the hashing and JSON before the transaction: the lock is held for the inserts only
                rows = [(json.dumps(p.prompt), p.chosen, p.rejected, p.source, p.model, json.dumps(p.settings),
                         pair_identity(p.prompt, p.chosen, p.rejected)) for p in pairs[start : start + STAGE_CHUNK]]
                with self._transaction(wait_s) as db:
                    for row in rows:
                        # an identity a pending import holds counts too: the first copy of a pair is kept
                        if self._free_identity(db, row[-1]) is None:
                            continue
                        added.append(db.execute(
                            "INSERT INTO pairs (prompt_json, chosen, rejected, source, model, settings_json, identity,"
                            " import_token) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (*row, token)).lastrowid)
            with self._transaction(wait_s) as db:
                db.execute("DELETE FROM pending_imports WHERE token = ?", (token,))
        except BaseException:
            self._drop_import(token)
            raise
        return added

    def _drop_import(self, token: int) -> None:
        """Delete what a failed import wrote; if even that fails (busy, damaged), its rows stay hidden
        until an open that has the store to itself deletes them."""
        try:
            with self._transaction() as db:
                db.execute("DELETE FROM pairs WHERE import_token = ?", (token,))
                db.execute("DELETE FROM pending_imports WHERE token = ?", (token,))
        except (UserError, sqlite3.Error) as exc:
            log.warning("left a failed import's hidden rows for the next start: %s", exc)

    @staticmethod
    def _drop_abandoned(db: sqlite3.Connection) -> None:
        """The rows of imports that were killed midway (only an open with the store to itself, when no
        import can be running, may call this)."""
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'pending_imports'").fetchone() or \
                db.execute("SELECT 1 FROM pending_imports LIMIT 1").fetchone() is None:
            return  # (no table: a test holding a store at an older schema)
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM pairs WHERE import_token IN (SELECT token FROM pending_imports)")
            db.execute("DELETE FROM pending_imports")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @contextmanager
    def own_connection(self) -> Iterator["Store"]:
        """This store on a connection of its own, for a long write in a worker (the app's import): its
        chunks then never hold the in-process lock that the UI thread's reads and picks take, and between
        chunks SQLite lets a pick through. An in-memory store has no second connection; it is itself."""
        if self.path == ":memory:":
            yield self
            return
        other = Store(self.path, write_wait_s=WRITE_WAIT_S, check=False)  # a worker: it can wait
        try:
            yield other
        finally:
            other.close()

    def list_pairs(self, search: str | None = None, source: str | None = None, limit: int | None = None) -> list[Pair]:
        """Pairs oldest first; `search` matches prompt, chosen or rejected text, case-insensitively."""
        clauses, params = [VISIBLE], []
        if search:
            clauses.append("(prompt_json LIKE ? OR chosen LIKE ? OR rejected LIKE ?)")
            params += [f"%{search}%"] * 3
        if source:
            clauses.append("source = ?")
            params.append(source)
        sql = "SELECT * FROM pairs WHERE " + " AND ".join(clauses)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [_pair_from_row(row) for row in self._query(sql, params)]

    def get_pair(self, pair_id: int) -> Pair | None:
        rows = self._query(f"SELECT * FROM pairs WHERE id = ? AND {VISIBLE}", (pair_id,))
        return _pair_from_row(rows[0]) if rows else None

    def update_pair(
        self, pair_id: int, *, prompt: list[Message] | None = None, chosen: str | None = None, rejected: str | None = None
    ) -> None:
        updates = {
            "prompt_json": json.dumps(prompt) if prompt is not None else None,
            "chosen": chosen,
            "rejected": rejected,
        }
        updates = {k: v for k, v in updates.items() if v is not None}
        if not updates:
            return
        assignments = ", ".join(f"{column} = ?" for column in updates)
        with self._transaction() as db:
            db.execute(
                f"UPDATE pairs SET {assignments}, identity = NULL,"
                " updated_at = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE id = ?",
                (*updates.values(), pair_id),
            )
            row = db.execute("SELECT prompt_json, chosen, rejected FROM pairs WHERE id = ?", (pair_id,)).fetchone()
            if row is not None:  # the edited pair is what it now says (unless another pair says that already)
                identity = self._free_identity(db, pair_identity(json.loads(row[0]), row[1], row[2]))
                db.execute("UPDATE pairs SET identity = ? WHERE id = ?", (identity, pair_id))

    @staticmethod
    def _free_identity(db: sqlite3.Connection, identity: str) -> str | None:
        """`identity`, or None when a stored pair has it already."""
        taken = db.execute("SELECT 1 FROM pairs WHERE identity = ?", (identity,)).fetchone()
        return None if taken else identity

    def delete_pair(self, pair_id: int) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM pairs WHERE id = ?", (pair_id,))

    def count_pairs(self) -> int:
        return self._query(f"SELECT COUNT(*) AS n FROM pairs WHERE {VISIBLE}")[0]["n"]

    def counts_by_source(self) -> dict[str, int]:
        rows = self._query(f"SELECT source, COUNT(*) AS n FROM pairs WHERE {VISIBLE} GROUP BY source ORDER BY source")
        return {row["source"]: row["n"] for row in rows}


# One row per conversation: the first user message stands in for a title the user never gave.
CONVERSATION_SUMMARY = """
    SELECT c.id, c.title, c.system_prompt,
           (SELECT content FROM messages WHERE conversation_id = c.id AND role = 'user' ORDER BY position LIMIT 1)
               AS first_message,
           (SELECT COUNT(*) FROM messages WHERE conversation_id = c.id) AS message_count,
           (SELECT COUNT(*) FROM pairs JOIN picks ON pairs.pick_id = picks.id WHERE picks.conversation_id = c.id)
               AS pair_count,
           COALESCE((SELECT MAX(created_at) FROM messages WHERE conversation_id = c.id), c.created_at) AS last_used
    FROM conversations AS c GROUP BY c.id"""


def _conversation_from_row(row: sqlite3.Row) -> ConversationSummary:
    title = row["title"] or " ".join((row["first_message"] or "(no messages)").split())
    return ConversationSummary(row["id"], title, row["system_prompt"], row["message_count"], row["pair_count"],
                               row["last_used"])


def _pair_from_row(row: sqlite3.Row) -> Pair:
    return Pair(
        prompt=json.loads(row["prompt_json"]),
        chosen=row["chosen"],
        rejected=row["rejected"],
        source=row["source"],
        model=row["model"],
        settings=json.loads(row["settings_json"]),
        id=row["id"],
        created_at=row["created_at"],
    )
