"""The `breakwater` commands that work on a job database: ingest, worker, backfill, costs, serve.

Each opens the job store (`--db`, else BREAKWATER_DB, else ./breakwater.sqlite3):
a SQLite path or `sqlite:///PATH`, or a `postgresql://` URL (`state.open`),
builds the pipeline from the environment with the budget ledger in that store,
and prints, before anything else, the daily budgets in force and which
providers have no key (those run mock-only and spend nothing).
"""
