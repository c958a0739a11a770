"""The pipeline a worker runs: wiring, chunking, the worker and backfill."""
