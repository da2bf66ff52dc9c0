"""pytest configuration: the loop matrix fixture ``loop_kind``.

Parameters: stock asyncio, c10k-epoll-et, c10k-epoll-lt, c10k-uring.  The c10k
ones fail (never skip) when `import c10k` fails, naming `pip install ./crates/py`.
The harness itself lives in harness.py so test modules can import its helpers.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import loop_kind  # noqa: E402,F401  (the fixture)
