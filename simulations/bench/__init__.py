"""Benchmarks: what Breakwater's resilience costs per call, next to the libraries it replaces."""
