"""Benchmarks: each prints one JSON line with `bench`, `value`, `unit` and `ratio`."""
