"""Benchmarks against the real broker. Run them with ``python -m bench.<name>``."""
