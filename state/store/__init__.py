"""The job store: its protocol, one schema, the SQLite and PostgreSQL backends and ledgers."""
