"""The schema, as numbered migrations applied in order, each written once for both dialects.

Each migration runs in its own transaction (DDL is transactional in both:
`BEGIN IMMEDIATE` on SQLite, a transaction holding `pg_advisory_xact_lock`
on PostgreSQL) and records itself in `schema_version`, so opening a
database of any older version upgrades it step by step, and two processes
opening the same old database at once apply each step exactly once
(`state.store.database.migrate`). A migration, once released, is never
edited: a change is a new migration. `tests/test_migrations.py` holds every
released migration, rendered for each dialect, to the bytes it shipped with
(`tests/migrations/`).

Both dialects share the version numbers, tables, columns, keys and indexes;
only a few words differ, and the statements leave those as `{words}`, each
spelled per dialect in one table (`_WORDS`; released migrations use it, so
a spelling never changes either: a new one is a new word). On PostgreSQL:
BYTEA for BLOB, DOUBLE PRECISION for REAL, BIGINT for the ledger's request
counts (SQLite's INTEGER is 64-bit), BOOLEAN for `degraded`, an identity
column for AUTOINCREMENT, and `COLLATE "C"` on the text the store orders by
(job ids and ISO timestamps), so `lease` and `degraded_jobs` order rows
byte by byte as SQLite does, whatever the server's locale.

Plain column types, no STRICT tables, no CHECK on states: a new state or
column is then one `ALTER TABLE`, never a table rebuild. The state machine
and the store guard the values. Vectors are float32 BLOBs (`state.store.vectors`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

_WORDS: Final = {
    # word: (SQLite's, PostgreSQL's)
    "blob": ("BLOB", "BYTEA"),
    "real": ("REAL", "DOUBLE PRECISION"),
    # A count that may pass 2**31 (the ledger's requests): SQLite's INTEGER is 64-bit.
    "counter": ("INTEGER", "BIGINT"),
    "flag": ("INTEGER", "BOOLEAN"),
    # An integer primary key the database assigns in increasing order.
    "serial_key": (
        "INTEGER PRIMARY KEY AUTOINCREMENT",
        "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    ),
    # A column suffix: text the store orders by, ordered byte by byte.
    "bytewise": ("", ' COLLATE "C"'),
}

Spelling = Mapping[str, str]
"""How one dialect spells each word a migration leaves open."""

SQLITE: Final[Spelling] = {word: pair[0] for word, pair in _WORDS.items()}
POSTGRES: Final[Spelling] = {word: pair[1] for word, pair in _WORDS.items()}


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]
    """The statements, with `{words}` where the dialects differ."""

    def render(self, spelling: Spelling) -> tuple[str, ...]:
        """The statements as `spelling`'s dialect runs them."""
        return tuple(statement.format_map(spelling) for statement in self.statements)


SCHEMA_VERSION_TABLE: Final = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL
)"""

MIGRATIONS: Final = (
    Migration(
        1,
        "documents, jobs and their audit trail",
        (
            """CREATE TABLE documents (
                sha256 TEXT PRIMARY KEY,
                content {blob} NOT NULL
            )""",
            """CREATE TABLE jobs (
                id TEXT{bytewise} PRIMARY KEY,
                sha256 TEXT NOT NULL UNIQUE REFERENCES documents (sha256),
                filename TEXT NOT NULL,
                mime_type TEXT NOT NULL,
                state TEXT NOT NULL,
                version INTEGER NOT NULL,
                step_attempts INTEGER NOT NULL,
                not_before {real} NOT NULL,
                wait_reason TEXT,
                resume_to TEXT,
                degraded {flag} NOT NULL,
                last_error TEXT,
                failure_reason TEXT,
                lease_owner TEXT,
                lease_expires_at {real},
                created_at TEXT{bytewise} NOT NULL,
                updated_at TEXT NOT NULL
            )""",
            # What `lease` scans: live jobs by readiness.
            """CREATE INDEX jobs_ready ON jobs (not_before)
                WHERE state NOT IN ('complete', 'failed')""",
            "CREATE INDEX jobs_state ON jobs (state)",
            """CREATE TABLE job_events (
                seq {serial_key},
                job_id TEXT NOT NULL REFERENCES jobs (id),
                version INTEGER NOT NULL,
                source TEXT,
                dest TEXT NOT NULL,
                trigger TEXT NOT NULL,
                reason TEXT NOT NULL,
                correlation_id TEXT,
                at TEXT NOT NULL
            )""",
            "CREATE INDEX job_events_job ON job_events (job_id, seq)",
        ),
    ),
    Migration(
        2,
        "parse results, chunks and embeddings",
        (
            """CREATE TABLE parses (
                sha256 TEXT PRIMARY KEY REFERENCES documents (sha256),
                markdown TEXT NOT NULL,
                pages INTEGER NOT NULL,
                failed_pages TEXT NOT NULL,
                parser_job_id TEXT NOT NULL,
                path TEXT NOT NULL
            )""",
            """CREATE TABLE chunks (
                sha256 TEXT NOT NULL REFERENCES documents (sha256),
                chunk_index INTEGER NOT NULL,
                text TEXT NOT NULL,
                PRIMARY KEY (sha256, chunk_index)
            )""",
            """CREATE TABLE embeddings (
                sha256 TEXT NOT NULL,
                chunk_index INTEGER NOT NULL,
                model TEXT NOT NULL,
                dimensions INTEGER NOT NULL,
                vector {blob} NOT NULL,
                path TEXT NOT NULL,
                PRIMARY KEY (sha256, chunk_index, model, dimensions),
                FOREIGN KEY (sha256, chunk_index) REFERENCES chunks (sha256, chunk_index)
            )""",
        ),
    ),
    Migration(
        3,
        "the budget ledger",
        (
            """CREATE TABLE budget_ledger (
                key TEXT PRIMARY KEY,
                usd {real} NOT NULL,
                requests {counter} NOT NULL,
                expires_at {real} NOT NULL
            )""",
            "CREATE INDEX budget_ledger_expiry ON budget_ledger (expires_at)",
        ),
    ),
    Migration(
        4,
        "each job's correlation id",
        (
            "ALTER TABLE jobs ADD COLUMN correlation_id TEXT",
            # Jobs from before: the id their upload's audit row carried, else their own.
            """UPDATE jobs SET correlation_id = COALESCE(
                (SELECT e.correlation_id FROM job_events e
                 WHERE e.job_id = jobs.id AND e.trigger = 'create'),
                id)""",
        ),
    ),
    Migration(
        5,
        "remote parse jobs, recorded before their upload",
        (
            """CREATE TABLE remote_parses (
                name TEXT PRIMARY KEY,
                sha256 TEXT NOT NULL REFERENCES documents (sha256),
                job_id TEXT NOT NULL REFERENCES jobs (id),
                correlation_id TEXT NOT NULL,
                status TEXT NOT NULL,
                remote_id TEXT,
                api_version TEXT NOT NULL,
                options TEXT NOT NULL,
                estimated_pages INTEGER NOT NULL,
                estimated_usd {real} NOT NULL,
                reservation TEXT,
                due_at {real} NOT NULL,
                deadline {real} NOT NULL,
                polls INTEGER NOT NULL,
                claimed_by TEXT,
                error TEXT,
                created_at {real} NOT NULL,
                updated_at TEXT NOT NULL
            )""",
            # At most one upload per document while one is recorded or remote:
            # whichever process comes second finds the first and waits on it.
            """CREATE UNIQUE INDEX remote_parses_live ON remote_parses (sha256)
                WHERE status IN ('intent', 'live')""",
            # What the poller scans.
            """CREATE INDEX remote_parses_due ON remote_parses (due_at)
                WHERE status = 'live'""",
            # What a webhook names.
            "CREATE INDEX remote_parses_remote_id ON remote_parses (remote_id)",
        ),
    ),
)

LATEST: Final = MIGRATIONS[-1].version
