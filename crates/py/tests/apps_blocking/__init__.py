"""Blocking handlers for test_blocking.py (served by ``python -m c10k serve``)."""
