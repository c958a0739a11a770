"""The `breakwater` commands that work on a job database: ingest, worker, backfill, costs, serve.

Each opens the SQLite file (`--db`, else BREAKWATER_DB, else ./breakwater.sqlite3),
builds the pipeline from the environment with the budget ledger in that file,
and prints, before anything else, the daily budgets in force and which
providers have no key (those run mock-only and spend nothing).
"""
