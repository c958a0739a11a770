"""Durable job state for the document pipeline: the state machine and its store.

`state.machine` says which moves a job may make; `state.store.protocol` is the
`JobStore` protocol every backend implements; `SqliteJobStore` is the
embedded default, with the budget's ledger in the same file.
"""

from resilience.events import quiet_until_configured
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
from state.store.database import SchemaTooNew
from state.store.ledger import SqlLedger
from state.store.protocol import (
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
from state.store.sqlite import SqliteJobStore

quiet_until_configured(__name__)  # see resilience.events

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
    "SqlLedger",
    "SqliteJobStore",
    "StaleJob",
    "StoredChunk",
    "StoredParse",
    "Trigger",
    "Upload",
    "WaitReason",
    "next_state",
]
