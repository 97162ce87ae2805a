"""The SQLite store: conversations, every pick, and the preference pairs made from them.

WAL mode and one transaction per user action: a pick is on disk, with its pairs, before
`record_pick` returns, so killing the app at any moment loses nothing committed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from .errors import UserError
from .migrations import migrate, schema_version
from .pairs import Message, Pair

PICK_OUTCOMES = ("chosen", "written", "tie", "skip")


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
    def __init__(self, path: str | Path = ":memory:"):
        self.path = str(path)
        try:
            # Workers (generation, import) and the UI thread share one connection; the lock
            # serialises them, which SQLite needs for a shared connection anyway.
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            migrate(self._db)
        except sqlite3.DatabaseError as exc:
            raise UserError(f"Can't open the store {self.path}: {exc}") from exc
        self._lock = threading.RLock()

    @property
    def schema_version(self) -> int:
        """How many migrations this store has applied."""
        return schema_version(self._db)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                self._db.execute("ROLLBACK")
                raise UserError(f"Couldn't save to {self.path}: {exc}") from exc

    def _query(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        with self._lock:
            cursor = self._db.execute(sql, params)
            cursor.row_factory = sqlite3.Row
            return cursor.fetchall()

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
            pair_ids = [
                db.execute(
                    "INSERT INTO pairs (pick_id, prompt_json, chosen, rejected, source, model, settings_json)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (pick_id, prompt_json, winner, loser, source, model, settings_json),
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

    def add_pairs(self, pairs: Sequence[Pair]) -> list[int]:
        """Insert all pairs or none."""
        with self._transaction() as db:
            return [
                db.execute(
                    "INSERT INTO pairs (prompt_json, chosen, rejected, source, model, settings_json)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (json.dumps(p.prompt), p.chosen, p.rejected, p.source, p.model, json.dumps(p.settings)),
                ).lastrowid
                for p in pairs
            ]

    def list_pairs(self, search: str | None = None, source: str | None = None, limit: int | None = None) -> list[Pair]:
        """Pairs oldest first; `search` matches prompt, chosen or rejected text, case-insensitively."""
        clauses, params = [], []
        if search:
            clauses.append("(prompt_json LIKE ? OR chosen LIKE ? OR rejected LIKE ?)")
            params += [f"%{search}%"] * 3
        if source:
            clauses.append("source = ?")
            params.append(source)
        sql = "SELECT * FROM pairs"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [_pair_from_row(row) for row in self._query(sql, params)]

    def get_pair(self, pair_id: int) -> Pair | None:
        rows = self._query("SELECT * FROM pairs WHERE id = ?", (pair_id,))
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
                f"UPDATE pairs SET {assignments}, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE id = ?",
                (*updates.values(), pair_id),
            )

    def delete_pair(self, pair_id: int) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM pairs WHERE id = ?", (pair_id,))

    def count_pairs(self) -> int:
        return self._query("SELECT COUNT(*) AS n FROM pairs")[0]["n"]

    def counts_by_source(self) -> dict[str, int]:
        rows = self._query("SELECT source, COUNT(*) AS n FROM pairs GROUP BY source ORDER BY source")
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
