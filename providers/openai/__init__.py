"""The OpenAI embeddings client and its deterministic mock."""
