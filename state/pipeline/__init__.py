"""The pipeline a worker runs: wiring, chunking, the steps, the worker's loop, and backfill."""
