"""Protocols and scripts that test_processes.py and test_bounded.py run in subprocesses.

They are loaded as ``apps.MODULE:FACTORY`` by ``python -m c10k serve`` (the tests put
crates/py/tests on PYTHONPATH), or run as scripts (run_main.py).
"""
