"""Durable job state for the document pipeline: the state machine and its store.

`state.machine` says which moves a job may make; `state.store` is the
`JobStore` protocol every backend implements; `SqliteJobStore` is the
embedded default, with the budget's ledger in the same file.
"""

from state.machine import (
    STEPS,
    TERMINAL,
    IllegalTransition,
    Job,
    JobState,
    Trigger,
    WaitReason,
    next_state,
)
from state.sqlite_db import SchemaTooNew
from state.sqlite_ledger import SqliteLedger
from state.sqlite_store import SqliteJobStore
from state.store import (
    ChunkText,
    Embedding,
    EmbeddingRow,
    JobChanges,
    JobEvent,
    JobNotFound,
    JobStore,
    NotStored,
    StaleJob,
    StoredChunk,
    StoredParse,
    Upload,
)

__all__ = [
    "STEPS",
    "TERMINAL",
    "ChunkText",
    "Embedding",
    "EmbeddingRow",
    "IllegalTransition",
    "Job",
    "JobChanges",
    "JobEvent",
    "JobNotFound",
    "JobState",
    "JobStore",
    "NotStored",
    "SchemaTooNew",
    "SqliteJobStore",
    "SqliteLedger",
    "StaleJob",
    "StoredChunk",
    "StoredParse",
    "Trigger",
    "Upload",
    "WaitReason",
    "next_state",
]
