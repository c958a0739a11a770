"""The LlamaParse client, its deterministic mock, its webhooks, and their relay through Redis."""
