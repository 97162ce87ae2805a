"""Ordered schema migrations for the SQLite store; each runs once and is recorded."""

from __future__ import annotations

import sqlite3
from typing import Callable

from .identity import identity_of_row

# Each migration returns its SQL; `migrate` runs it and records it in one transaction.
MIGRATIONS: list[Callable[[], str]] = []
migration = MIGRATIONS.append


@migration
def m001_initial() -> str:
    return """
        CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
            system_prompt TEXT NOT NULL DEFAULT '',
            model TEXT
        );
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL,
            created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
        );
        CREATE INDEX messages_by_conversation ON messages(conversation_id, position);
        -- Every pick the user made, ties and skips included, with all candidates as shown.
        CREATE TABLE picks (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER REFERENCES conversations(id) ON DELETE SET NULL,
            prompt_json TEXT NOT NULL,
            candidates_json TEXT NOT NULL,
            outcome TEXT NOT NULL CHECK (outcome IN ('chosen', 'written', 'tie', 'skip')),
            chosen_index INTEGER,
            written TEXT,
            model TEXT,
            settings_json TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
        );
        CREATE TABLE pairs (
            id INTEGER PRIMARY KEY,
            pick_id INTEGER REFERENCES picks(id) ON DELETE SET NULL,
            prompt_json TEXT NOT NULL,
            chosen TEXT NOT NULL,
            rejected TEXT NOT NULL,
            source TEXT NOT NULL,
            model TEXT,
            settings_json TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
            updated_at TEXT
        );
        CREATE INDEX pairs_by_source ON pairs(source);
    """


@migration
def m002_compare_columns() -> str:
    # A compare-screen pick says which two models answered and who won in columns of its own, so the
    # tally is a query, not a text search through every pick's settings. Picks made before this move
    # their record over; the record's older one-adapter shape was never released and is not read.
    record = "CASE WHEN json_valid(settings_json) THEN json_extract(settings_json, '$.compare.{}') END"
    old, new, winner, blind = (record.format(key) for key in ("old", "new", "winner", "blind"))
    return f"""
        ALTER TABLE picks ADD COLUMN compare_old TEXT;
        ALTER TABLE picks ADD COLUMN compare_new TEXT;
        ALTER TABLE picks ADD COLUMN compare_winner TEXT CHECK (compare_winner IN ('new', 'old', 'tie'));
        ALTER TABLE picks ADD COLUMN compare_blind INTEGER;
        UPDATE picks SET compare_old = COALESCE({old}, 'base'), compare_new = {new}, compare_winner = {winner},
                         compare_blind = CASE WHEN {blind} = 1 THEN 1 ELSE 0 END
            WHERE typeof({new}) = 'text' AND {winner} IN ('new', 'old', 'tie');
        CREATE INDEX picks_by_compare ON picks(compare_new) WHERE compare_new IS NOT NULL;
    """


@migration
def m003_conversation_titles() -> str:
    # A name the user gave a conversation on the conversations list; NULL shows its first message instead.
    return "ALTER TABLE conversations ADD COLUMN title TEXT;"


@migration
def m004_pair_identity() -> str:
    # Content identity (identity.py), so a re-imported file adds nothing. Pairs stored twice before this
    # stay: the oldest copy gets the identity, later copies NULL (a unique index lets NULLs repeat).
    return """
        ALTER TABLE pairs ADD COLUMN identity TEXT;
        UPDATE pairs SET identity = pair_identity(prompt_json, chosen, rejected)
            WHERE id IN (SELECT MIN(id) FROM pairs GROUP BY prompt_json, chosen, rejected);
        CREATE UNIQUE INDEX pairs_by_identity ON pairs(identity);
    """


@migration
def m005_pending_imports() -> str:
    # An import commits a chunk at a time, so that a pick waits for one chunk, not the whole file; its rows
    # carry its token and stay out of every read (store.VISIBLE) while the token is in pending_imports.
    # Landing is deleting that one row; a failed or killed import's rows are deleted (store.py).
    # Tokens are random, not AUTOINCREMENT: a recovered store's counter could start over and hide old rows.
    return """
        CREATE TABLE pending_imports (
            token INTEGER PRIMARY KEY,
            started_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
        );
        ALTER TABLE pairs ADD COLUMN import_token INTEGER;
    """


def migrate(db: sqlite3.Connection) -> None:
    """Apply every migration not yet recorded in `_migrations`, each in its own transaction.

    The record goes in first, under the write lock: when two processes open a new store at once (two
    imports), the one that waited finds the name taken and skips the step the other one just ran.
    """
    db.create_function("pair_identity", 3, identity_of_row, deterministic=True)
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    applied = {row[0] for row in db.execute("SELECT name FROM _migrations")}
    for step in MIGRATIONS:
        if step.__name__ in applied:
            continue
        record = f"INSERT INTO _migrations VALUES ('{step.__name__}', strftime('%Y-%m-%dT%H:%M:%fZ','now'));"
        try:
            db.executescript(f"BEGIN IMMEDIATE;\n{record}\n{step()}\nCOMMIT;")
        except sqlite3.Error:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if not db.execute("SELECT 1 FROM _migrations WHERE name = ?", (step.__name__,)).fetchone():
                raise  # a failed step, not one that another process applied meanwhile


def schema_version(db: sqlite3.Connection) -> int:
    return db.execute("SELECT COUNT(*) FROM _migrations").fetchone()[0]
