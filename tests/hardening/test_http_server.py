"""The gateway's HTTP server bounds what it reads: framing and headers over a raw socket.

Against the real server (uvicorn with services.gateway.http_limits) on a loopback port,
while a well-behaved client keeps querying (tests/hardening/stalls.py). Every hostile
input gets an HTTP answer with a JSON reason, or a closed connection where it never
finished a request; none gets a 5xx other than the 503 of the connection limit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.gateway.schemas import MAX_QUERY_BODY_BYTES
from services.gateway.settings import GatewaySettings
from tests.hardening.bad_inputs import SERVICE_FUZZ
from tests.hardening.conftest import LIVE_HTTP_LIMITS, MAX_UPLOAD_BYTES
from tests.hardening.raw_http import RawReply, ReplyReader, chunked, connect, exchange, read_reply, request
from tests.hardening.stalls import GoodClient, http_good_call
from tests.hardening.tally import TALLY

SURFACE = "http-raw"
DEFAULTS = GatewaySettings()
TEXT = "/api/v1/search/text"
MIXED = "/api/v1/search/mixed"
JSON = [("Content-Type", "application/json")]
GOOD_JSON = json.dumps({"query": "a handwritten seven", "k": 3}).encode()
# What a hostile request may get: an answer with a reason, never a server fault.
REFUSED = {400, 404, 405, 408, 413, 414, 415, 422, 431}


@pytest.fixture(scope="module", autouse=True)
def good_client(live_http: int) -> Iterator[None]:
    call, close = http_good_call(live_http)
    with GoodClient(call, "raw HTTP framing and headers") as report:
        yield
    close()
    assert report.server_errors == 0, report.line()
    assert report.statuses.get(200), report.line()


def sent(port: int, pieces: bytes | list[bytes], *, pause_s: float = 0.0) -> RawReply:
    """Send, tally by the bytes sent, and check the answer is a reasoned refusal or a success."""
    reply = exchange(port, pieces, pause_s=pause_s)
    wire = pieces if isinstance(pieces, bytes) else b"".join(pieces)
    TALLY.record(SURFACE, wire[:4096] + str(len(wire)).encode(), str(reply.status))
    if reply.status is not None:
        assert reply.status < 500, f"{reply.status} {reply.body[:300]!r} for {wire[:200]!r}"
        assert reply.status in REFUSED | {200}, f"unexpected {reply.status} for {wire[:200]!r}"
        if reply.status >= 400 and not wire.startswith(b"HEAD "):
            assert reply.detail().strip()
    return reply


def test_a_good_request_over_the_raw_socket(live_http: int) -> None:
    reply = sent(live_http, request("POST", TEXT, JSON, GOOD_JSON))
    assert reply.status == 200, reply.body[:300]


def test_request_line_over_the_limit_is_414(live_http: int) -> None:
    for size in (DEFAULTS.http_max_request_line_bytes + 1, 64 * 1024, 1024 * 1024):
        reply = sent(live_http, request("GET", TEXT + "?q=" + "a" * size))
        assert reply.status == 414, reply
        assert reply.headers["connection"] == "close"


def test_headers_over_the_limits_are_431(live_http: int) -> None:
    many = [(f"X-Header-{i}", "x") for i in range(DEFAULTS.http_max_headers + 1)]
    assert sent(live_http, request("GET", "/healthz", many)).status == 431
    big = [("X-Big", "x" * (DEFAULTS.http_max_header_bytes + 1))]
    assert sent(live_http, request("GET", "/healthz", big)).status == 431
    spread = [(f"X-Part-{i}", "y" * 400) for i in range(60)]  # each small, together over the limit
    assert sent(live_http, request("GET", "/healthz", spread)).status == 431
    # Issue 17, #6: a 64 MB header was read whole (seconds of copying) and answered 200.
    started = time.monotonic()
    reply = sent(live_http, request("GET", "/healthz", [("X-Huge", "z" * (64 * 1024 * 1024))]))
    assert reply.status == 431, reply
    print(f"\n64 MB header: 431 after {(time.monotonic() - started) * 1000:.0f} ms")


def test_headers_within_the_limits_are_read(live_http: int) -> None:
    fine = [(f"X-Header-{i}", "x" * 100) for i in range(50)]
    assert sent(live_http, request("GET", "/healthz", fine)).status == 200


def test_a_client_too_slow_with_its_headers_gets_408(live_http: int) -> None:
    head = request("GET", "/healthz", [("X-Slow", "1")])
    reply = sent(live_http, [head[:10], head[10:20]], pause_s=LIVE_HTTP_LIMITS["http_header_timeout_s"] + 1.5)  # type: ignore[operator]
    assert reply.status == 408, reply


def test_a_body_that_pauses_gets_408(live_http: int) -> None:
    head = request("POST", TEXT, [*JSON, ("Content-Length", str(len(GOOD_JSON)))], length=False)
    reply = sent(
        live_http,
        [head + GOOD_JSON[:5], GOOD_JSON[5:]],
        pause_s=LIVE_HTTP_LIMITS["http_body_timeout_s"] + 1.5,
    )  # type: ignore[operator]
    assert reply.status == 408, reply


def test_a_connection_that_never_asks_is_closed(live_http: int) -> None:
    with connect(live_http) as sock:
        started = time.monotonic()
        reply = read_reply(sock)  # nothing sent: the server closes after the header timeout
        waited = time.monotonic() - started
    assert reply.status is None
    TALLY.record(SURFACE, b"idle connection", "closed")
    print(f"\nidle connection closed after {waited:.1f} s")


def test_connections_over_the_limit_get_503_with_retry_after(live_http: int) -> None:
    limit = int(LIVE_HTTP_LIMITS["http_max_connections"])  # type: ignore[call-overload]
    held = []
    try:
        for _ in range(limit):
            held.append(connect(live_http))
        time.sleep(0.2)  # let the server accept them all
        reply = exchange(live_http, request("GET", "/healthz"))
        TALLY.record(SURFACE, b"connection over the limit", str(reply.status))
        assert reply.status == 503, reply
        assert int(reply.headers["retry-after"]) >= 1
        assert reply.detail()
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert sent(live_http, request("GET", "/healthz")).status == 200


def test_chunked_bodies_are_counted_as_they_arrive(live_http: int) -> None:
    chunked_json = [*JSON, ("Transfer-Encoding", "chunked")]
    # Issue 17, #5: a 40 MB chunked JSON body was read, parsed and answered 200.
    body = b'{"query": "seven", "pad": "' + b"x" * (40 * 1024 * 1024) + b'"}'
    reply = sent(live_http, request("POST", TEXT, chunked_json, chunked(body, 1024 * 1024), length=False))
    assert reply.status == 413, reply
    assert str(MAX_QUERY_BODY_BYTES) in reply.detail()
    # The app-wide cap, for a route that takes uploads.
    big = b'{"parts": [{"text": "' + b"y" * (3 * MAX_UPLOAD_BYTES) + b'"}]}'
    assert (
        sent(live_http, request("POST", MIXED, chunked_json, chunked(big, 65536), length=False)).status == 413
    )
    # Within the limits, chunked or not, in one chunk or many.
    for size in (1, 7, 1024):
        reply = sent(live_http, request("POST", TEXT, chunked_json, chunked(GOOD_JSON, size), length=False))
        assert reply.status == 200, reply


def test_a_length_over_the_limit_is_refused_before_the_body(live_http: int) -> None:
    head = request("POST", TEXT, [*JSON, ("Content-Length", str(10**12))], length=False)
    assert sent(live_http, head).status == 413


def test_json_bodies_holding_too_many_values_are_413(live_http: int) -> None:
    values = DEFAULTS.max_json_values
    for body in (
        b"[" + b"{}," * values + b"{}]",
        b'{"query": "seven", "filter": {"label": [' + b"1," * values + b"1]}}",
        b"[" * (values + 1),
    ):
        assert sent(live_http, request("POST", TEXT, JSON, body)).status == 413


MALFORMED: list[bytes] = [
    b"GARBAGE\r\n\r\n",
    b"\r\n\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\nHost: x\n\n",  # bare LF
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n: empty-name\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n folded: continuation\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"G\xffT / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://other.example/api/v1/info HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"CONNECT example.org:443 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /api/v1/search/text HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /api/v1/search/text HTTP/1.1\r\nHost: x\r\nContent-Length: 1e3\r\n\r\n",
    b"POST /api/v1/search/text HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
    b"POST /api/v1/search/text HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"POST /api/v1/search/text HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /api/v1/search/text HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    b"POST /api/v1/search/text HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    b"POST /api/v1/search/text HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"f" * 40
    + b"\r\n",
    b"POST /api/v1/search/text HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;"
    + b"x" * 100_000
    + b"\r\nhello\r\n0\r\n\r\n",
    b"POST /api/v1/search/text HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
    + b"X-Trailer: t\r\n" * 2000
    + b"\r\n",
    b"POST /api/v1/search/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /api/v1/search/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json; charset=utf-32\r\n"
    b"Content-Length: 8\r\n\r\n\xff\xfe\x00\x00{\x00\x00\x00",
    b"POST /api/v1/search/text HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100000000\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),  # a TLS ClientHello
]


def test_malformed_framing_is_refused(live_http: int) -> None:
    for raw in MALFORMED:
        reply = sent(live_http, raw)
        assert reply.status is None or reply.status in REFUSED | {200}, (raw[:100], reply)
    assert sent(live_http, request("POST", TEXT, JSON, GOOD_JSON)).status == 200


def test_pipelined_requests_are_answered_in_order(live_http: int) -> None:
    one = request("POST", TEXT, JSON, GOOD_JSON)
    with connect(live_http) as sock:
        sock.sendall(one + request("GET", "/healthz") + one)
        replies = ReplyReader(sock)
        statuses = [replies.next().status for _ in range(3)]
    assert statuses == [200, 200, 200]


FIELD_NAMES = st.sampled_from(
    ["Content-Type", "Content-Length", "Transfer-Encoding", "Host", "Expect", "X-Api-Key"]
)
FIELD_VALUES = st.binary(max_size=40).filter(lambda value: b"\r" not in value and b"\n" not in value)


@SERVICE_FUZZ
@given(
    method=st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"get", b"P0ST"]),
    target=st.sampled_from(
        [b"/healthz", b"/api/v1/search/text", b"/api/v1/search/mixed", b"/", b"//", b"/..%2f"]
    ),
    fields=st.lists(st.tuples(FIELD_NAMES, FIELD_VALUES), max_size=5),
    body=st.binary(max_size=64),
)
def test_any_framing(
    live_http: int, method: bytes, target: bytes, fields: list[tuple[str, bytes]], body: bytes
) -> None:
    head = method + b" " + target + b" HTTP/1.1\r\nHost: x\r\n"
    head += b"".join(name.encode() + b": " + value + b"\r\n" for name, value in fields)
    sent(live_http, head + b"\r\n" + body)


def test_enough_raw_inputs_were_tried() -> None:
    assert TALLY.distinct(SURFACE) >= 80, TALLY.summary()
