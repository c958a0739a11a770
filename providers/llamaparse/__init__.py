"""The LlamaParse client, its deterministic mock, and its webhooks."""
