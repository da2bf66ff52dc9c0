"""Pub/sub with redis-py (the `redis` package from PyPI) against a c10k RESP server.

Usage: python redis_py_pubsub.py PORT

Run by crates/cli/tests/python_redis.rs with the virtualenv scripts/test.sh makes
(target/py-venv). Exits non-zero, with the reason on stderr, on the first failure;
every wait is bounded by a timeout.
"""

import logging
import sys
import time

import redis

TIMEOUT = 10.0


def next_message(pubsub, what):
    """The next message of any type (subscribe confirmations included), or fail."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=deadline - time.monotonic())
        if msg is not None:
            return msg
    raise AssertionError(f"{what}: nothing within {TIMEOUT} s")


def expect(pubsub, want, what):
    got = next_message(pubsub, what)
    assert got == want, f"{what}: got {got!r}, want {want!r}"


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def resp3_falls_back(port):
    """A client left at its default protocol tries HELLO 3 first: the server's
    `unknown command` makes it fall back to RESP2 (with a logged warning)."""
    records = Records()
    logger = logging.getLogger("redis")
    logger.addHandler(records)
    logger.propagate = False
    try:
        r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=TIMEOUT)
        assert r.ping() is True
        r.close()
    finally:
        logger.removeHandler(records)
        logger.propagate = True
    if redis.VERSION >= (8,):
        assert any("Falling back to RESP2" in m for m in records.messages), records.messages


def main():
    port = int(sys.argv[1])
    resp3_falls_back(port)
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=TIMEOUT, protocol=2)
    assert r.ping() is True
    assert r.set("k", "v") is True
    assert r.get("k") == b"v"

    sub = r.pubsub()
    sub.subscribe("news")
    expect(sub, {"type": "subscribe", "pattern": None, "channel": b"news", "data": 1}, "subscribe")
    psub = r.pubsub()
    psub.psubscribe("n*")
    expect(psub, {"type": "psubscribe", "pattern": None, "channel": b"n*", "data": 1}, "psubscribe")

    assert r.pubsub_numsub("news", "void") == [(b"news", 1), (b"void", 0)], r.pubsub_numsub("news", "void")
    assert r.pubsub_numpat() == 1
    assert r.pubsub_channels() == [b"news"]

    # A channel subscriber and a pattern subscriber: two receivers, in order.
    for i in range(100):
        assert r.publish("news", f"m{i}") == 2
    assert r.publish("void", "lost") == 0
    for i in range(100):
        data = f"m{i}".encode()
        expect(sub, {"type": "message", "pattern": None, "channel": b"news", "data": data}, f"message {i}")
        expect(psub, {"type": "pmessage", "pattern": b"n*", "channel": b"news", "data": data}, f"pmessage {i}")

    # listen() is a blocking iterator over the same stream.
    assert r.publish("news", "via listen") == 2
    for msg in sub.listen():
        assert msg == {"type": "message", "pattern": None, "channel": b"news", "data": b"via listen"}, msg
        break
    expect(psub, {"type": "pmessage", "pattern": b"n*", "channel": b"news", "data": b"via listen"}, "pmessage")

    # In subscribed mode PING is answered in the pub/sub form.
    sub.ping()
    expect(sub, {"type": "pong", "pattern": None, "channel": None, "data": b""}, "ping")

    # Unsubscribing ends the deliveries through that subscription.
    sub.unsubscribe("news")
    expect(sub, {"type": "unsubscribe", "pattern": None, "channel": b"news", "data": 0}, "unsubscribe")
    assert r.pubsub_numsub("news") == [(b"news", 0)]
    assert r.publish("news", "pattern only") == 1
    expect(psub, {"type": "pmessage", "pattern": b"n*", "channel": b"news", "data": b"pattern only"}, "pmessage")
    assert sub.get_message(timeout=0) is None

    sub.close()
    psub.close()
    r.close()
    print("ok")


if __name__ == "__main__":
    main()
