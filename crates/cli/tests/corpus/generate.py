#!/usr/bin/env python3
"""Writes the bad-input corpus of crates/cli/tests/bad_input.rs: one file per case,
raw bytes, under echo/, http/ and resp/. Run from this directory; deterministic.

http/ and resp/ cases are malformed: each must get a protocol error reply (HTTP 4xx/5xx,
RESP '-ERR ...') or a clean close, never a success and never a panic. echo/ cases are
hostile bytes that the echo app must send back unchanged. Add a case by adding a line
here (or dropping a file in the directory) and re-running.

resp/pubsub_* cases are the bad inputs of issue 14 (Redis pub/sub): subscribing to
100,000 channels, a 1 MiB channel name, PUBLISH to a channel nobody listens on,
unsubscribing what was never subscribed, the subscribed-mode rules. Their commands are
valid (Redis answers them); since the contract above wants an error reply first, each
starts with a malformed pub/sub command, SUBSCRIBE without a channel. The rest must be
answered (or the connection closed by a limit) without a panic, while the well-behaved
client goes on being served.
"""
import os
import random

rng = random.Random(10_000)
H = b"Host: x\r\n"


def post(headers, body=b""):
    return b"POST /echo HTTP/1.1\r\n" + H + headers + b"\r\n" + body


http = {
    "truncated_request_line": b"GET / HT",
    "truncated_headers": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b",
    "truncated_body": post(b"Content-Length: 100\r\n", b"abc"),
    "truncated_chunked_body": post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhel"),
    "bad_method_char": b"G@T / HTTP/1.1\r\n" + H + b"\r\n",
    "lowercase_version": b"GET / http/1.1\r\n" + H + b"\r\n",
    "version_2_0": b"GET / HTTP/2.0\r\n" + H + b"\r\n",
    "version_9_9": b"GET / HTTP/9.9\r\n" + H + b"\r\n",
    "version_1_x": b"GET / HTTP/1.x\r\n" + H + b"\r\n",
    "version_1_10": b"GET / HTTP/1.10\r\n" + H + b"\r\n",
    "version_missing": b"GET /\r\n\r\n",
    "version_trailing_garbage": b"GET / HTTP/1.1 extra\r\n" + H + b"\r\n",
    "target_missing": b"GET  HTTP/1.1\r\n" + H + b"\r\n",
    "request_line_only_spaces": b"   \r\n\r\n",
    "control_char_in_target": b"GET /\x01 HTTP/1.1\r\n" + H + b"\r\n",
    "nul_in_request_line": b"GET /\x00 HTTP/1.1\r\n" + H + b"\r\n",
    "nul_in_header_value": b"GET / HTTP/1.1\r\n" + H + b"X-A: b\x00c\r\n\r\n",
    "nul_in_header_name": b"GET / HTTP/1.1\r\n" + H + b"X\x00A: b\r\n\r\n",
    "header_without_colon": b"GET / HTTP/1.1\r\n" + H + b"X-A b\r\n\r\n",
    "header_space_before_colon": b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    "header_empty_name": b"GET / HTTP/1.1\r\n" + H + b": b\r\n\r\n",
    "obs_fold": b"GET / HTTP/1.1\r\n" + H + b"X-A: b\r\n c\r\n\r\n",
    "obs_fold_first_line": b"GET / HTTP/1.1\r\n c\r\n" + H + b"\r\n",
    "bare_cr_line_end": b"GET / HTTP/1.1\r" + H + b"\r\n",
    "missing_host_1_1": b"GET / HTTP/1.1\r\n\r\n",
    "duplicate_host": b"GET / HTTP/1.1\r\n" + H + b"Host: y\r\n\r\n",
    "cl_and_te_conflict": post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
    "cl_two_values": post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"),
    "cl_list_differs": post(b"Content-Length: 5, 6\r\n", b"hello!"),
    "cl_negative": post(b"Content-Length: -1\r\n"),
    "cl_plus_sign": post(b"Content-Length: +5\r\n", b"hello"),
    "cl_hex": post(b"Content-Length: 0x5\r\n", b"hello"),
    "cl_empty": post(b"Content-Length: \r\n"),
    "cl_inner_space": post(b"Content-Length: 1 0\r\n", b"0123456789"),
    "cl_absurd": post(b"Content-Length: 99999999999999999999999999\r\n", b"x"),
    "cl_u64_max_plus_one": post(b"Content-Length: 18446744073709551616\r\n", b"x"),
    "cl_over_max_body": post(b"Content-Length: 9000000\r\n", b"x"),
    "te_unknown": post(b"Transfer-Encoding: gzip\r\n", b"x"),
    "te_chunked_not_last": post(b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"),
    "te_empty": post(b"Transfer-Encoding: \r\n"),
    "te_space_before_colon": post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"),
    "te_on_http_1_0": b"POST /echo HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "chunk_size_not_hex": post(b"Transfer-Encoding: chunked\r\n", b"zz\r\nhello\r\n0\r\n\r\n"),
    "chunk_size_negative": post(b"Transfer-Encoding: chunked\r\n", b"-1\r\nx\r\n0\r\n\r\n"),
    "chunk_size_overflow": post(b"Transfer-Encoding: chunked\r\n", b"ffffffffffffffffffff\r\nx\r\n0\r\n\r\n"),
    "chunk_size_over_max_body": post(b"Transfer-Encoding: chunked\r\n", b"900000\r\nx"),
    "chunk_size_empty": post(b"Transfer-Encoding: chunked\r\n", b"\r\nx\r\n0\r\n\r\n"),
    "chunk_data_too_long": post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhelloXX\r\n0\r\n\r\n"),
    "chunk_extension_nul": post(b"Transfer-Encoding: chunked\r\n", b"5;\x00\r\nhello\r\n0\r\n\r\n"),
    "chunk_sizes_sum_over_max_body": post(
        b"Transfer-Encoding: chunked\r\n", b"4\r\naaaa\r\n800000\r\n"
    ),
    "head_over_64k": b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n",
    "request_line_over_64k": b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n" + H + b"\r\n",
    "too_many_headers": b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n",
    "method_100k": b"A" * 100_000,
    "tls_client_hello": bytes.fromhex("16030100a5010000a10303") + bytes(rng.randrange(256) for _ in range(160)),
    "binary_garbage_4k": bytes(rng.randrange(256) for _ in range(4096)),
    "all_ff_1k": b"\xff" * 1024,
    "all_nul_1k": b"\x00" * 1024,
    "crlf_flood_then_garbage": b"\r\n" * 1000 + b"\x00\x01\x02",
    "utf8_in_method": "GÉT / HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
}

resp = {
    "truncated_multibulk": b"*3\r\n$3\r\nSET\r\n$1\r\nk",
    "truncated_bulk_len": b"*1\r\n$4",
    "bulk_len_negative": b"*2\r\n$3\r\nGET\r\n$-5\r\nxxxxx\r\n",
    "bulk_len_absurd": b"*2\r\n$3\r\nGET\r\n$99999999999\r\n",
    "bulk_len_over_512mib": b"*2\r\n$3\r\nGET\r\n$536870913\r\n",
    "bulk_len_u64_overflow": b"*2\r\n$3\r\nGET\r\n$18446744073709551616\r\n",
    "bulk_len_not_a_number": b"*2\r\n$3\r\nGET\r\n$abc\r\nabc\r\n",
    "bulk_len_empty": b"*1\r\n$\r\n\r\n",
    "bulk_len_plus_sign": b"*1\r\n$+4\r\nPING\r\n",
    "bulk_data_longer_than_declared": b"*1\r\n$2\r\nPING\r\n",
    "bulk_missing_dollar": b"*1\r\n+PING\r\n",
    "multibulk_count_absurd": b"*99999999999\r\n",
    "multibulk_count_over_limit": b"*1048577\r\n",
    "multibulk_count_u64_overflow": b"*18446744073709551616\r\n",
    "multibulk_count_not_a_number": b"*abc\r\n",
    "multibulk_count_hex": b"*0x1\r\n$4\r\nPING\r\n",
    "multibulk_count_empty": b"*\r\n",
    "multibulk_negative_then_garbage": b"*-5\r\n\x00\x01",
    "nested_array": b"*1\r\n*1\r\n$4\r\nPING\r\n",
    "deeply_nested_arrays": b"*1\r\n" * 10000,
    "inline_over_64k": b"A" * 70000,
    "inline_unbalanced_quotes": b'SET "abc\r\n',
    "inline_nul_bytes": b"\x00\x00\x00\r\n",
    "unknown_command": b"*1\r\n$7\r\nNOTACMD\r\n",
    "wrong_arity": b"*1\r\n$3\r\nGET\r\n",
    "lf_only_framing": b"*1\n$4\nPING\n",
    "binary_garbage_4k": bytes(rng.randrange(256) for _ in range(4096)),
    "all_ff_1k": b"\xff" * 1024,
    "http_request_to_resp": b"GET / HTTP/1.1\r\n" + H + b"\r\n",
    "tls_client_hello": bytes.fromhex("16030100a5010000a10303") + bytes(rng.randrange(256) for _ in range(160)),
}



def cmd(*args):
    """A RESP multibulk request."""
    out = b"*%d\r\n" % len(args)
    for a in args:
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


# A malformed pub/sub command: '-ERR wrong number of arguments for 'subscribe' command'.
NO_CHANNEL = cmd(b"SUBSCRIBE")
resp.update({
    "pubsub_subscribe_100k_channels": NO_CHANNEL + cmd(b"SUBSCRIBE", *(b"c%d" % i for i in range(100_000))),
    "pubsub_channel_name_1mib": NO_CHANNEL + cmd(b"SUBSCRIBE", b"n" * (1 << 20)) + cmd(b"PING"),
    "pubsub_publish_to_nobody": NO_CHANNEL + cmd(b"PUBLISH", b"nobody", b"m") + cmd(b"PUBLISH", b"", b"")
    + b"PUBLISH nobody inline\r\n",
    "pubsub_unsubscribe_never_subscribed": NO_CHANNEL + cmd(b"UNSUBSCRIBE", b"never", b"subscribed")
    + cmd(b"PUNSUBSCRIBE", b"never*") + cmd(b"UNSUBSCRIBE") + cmd(b"PUNSUBSCRIBE"),
    "pubsub_subscribed_mode_errors": NO_CHANNEL + cmd(b"SUBSCRIBE", b"a") + cmd(b"PSUBSCRIBE", b"[^", b"*a" * 1001)
    + cmd(b"GET", b"k") + cmd(b"PUBLISH", b"a", b"m") + cmd(b"PUBSUB", b"NUMSUB") + cmd(b"PING", b"x")
    + cmd(b"RESET") + cmd(b"PUBSUB", b"CHANNELS", b"a", b"b") + cmd(b"PUBSUB", b"NOSUCH"),
})

echo = {
    "nul_bytes_64k": b"\x00" * 65536,
    "binary_garbage_64k": bytes(rng.randrange(256) for _ in range(1 << 16)),
    "all_ff_4k": b"\xff" * 4096,
    "one_byte": b"\x00",
    "crlf_flood": b"\r\n" * 50000,
    "http_request": b"GET / HTTP/1.1\r\n" + H + b"\r\n",
    "resp_command": b"*1\r\n$4\r\nPING\r\n",
    "tls_client_hello": bytes.fromhex("16030100a5010000a10303") + bytes(rng.randrange(256) for _ in range(160)),
}

for app, cases in (("http", http), ("resp", resp), ("echo", echo)):
    os.makedirs(app, exist_ok=True)
    for name, data in cases.items():
        with open(os.path.join(app, name), "wb") as f:
            f.write(data)
print(sum(map(len, (http, resp, echo))), "cases")
