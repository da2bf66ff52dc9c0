"""A module whose import fails with something other than ImportError (so
``apps.broken_import:Echo`` "cannot be imported")."""

raise RuntimeError("broken_import fails on purpose at import time")
