"""What the gateway's HTTP server reads, bounded: request line, headers, slow clients, connections,
bodies and what a JSON body holds.

uvicorn's httptools protocol enforces none of these: it buffers a request line and headers
of any size (httptools joins the pieces of a long header by concatenation, so a 64 MB
header costs seconds of copying), waits forever for a client that stops half-way through
its headers or body, and accepts every connection. `LimitedHttpToolsProtocol` adds the
limits in uvicorn's parser callbacks, counting bytes as they arrive (before they are
joined), and answers as HTTP says: 414 (request line), 431 (headers), 408 (a client too
slow), 503 with Retry-After (too many connections), each with a JSON `{"detail": ...}` and
`Connection: close`. After a refusal the connection is read and dropped for a moment
before it closes, so the client reads the answer rather than a reset.

`BodyLimits` counts body bytes as they stream in (chunked or not) and, for JSON, the
values the body holds: a body of `[{},{},...]` costs some 30 times its size as Python
objects once parsed, so one holding more values than a query needs is refused (413)
before it is parsed. FastAPI 0.165 has a body limit of its own (`max_body_size`, per app,
router or route, also counted as the body streams), but a body that announces a length
over it gets a text/plain 413 that replaces whatever the app answers; this one keeps
the API's JSON `{"detail": ...}` for every refusal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from services.gateway.errors import (
    HeadersTooLarge,
    HttpLimitError,
    MalformedHttp,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    TooManyConnections,
    UriTooLong,
    status_of,
)
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

# After a refusal, how long the rest of what the client sends is read and dropped before closing.
LINGER_S = 1.0
# Content types whose bodies FastAPI parses as JSON.
_JSON_TYPES = (b"application/json", b"+json")


@dataclass(frozen=True)
class HttpLimits:
    max_request_line_bytes: int
    max_header_bytes: int
    max_headers: int
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int
    retry_after_s: int

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> HttpLimits:
        return cls(
            max_request_line_bytes=settings.http_max_request_line_bytes,
            max_header_bytes=settings.http_max_header_bytes,
            max_headers=settings.http_max_headers,
            header_timeout_s=settings.http_header_timeout_s,
            body_timeout_s=settings.http_body_timeout_s,
            max_connections=settings.http_max_connections,
            retry_after_s=settings.retry_after_s,
        )


def uvicorn_options(settings: GatewaySettings) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.Config` that put the limits in place."""
    limits = HttpLimits.from_settings(settings)
    protocol = type("GatewayHttpProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})
    return {"http": protocol, "timeout_keep_alive": settings.http_keepalive_s}


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; the refusal itself is on the protocol."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of `limits` (a subclass per server sets it)."""

    limits: ClassVar[HttpLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refusal: HttpLimitError | None = None
        self._refused = False  # answered and lingering: what arrives is dropped
        self._head_pending = True  # the current request's headers are not complete yet
        self._head_bytes = 0
        self._url_bytes = 0
        self._header_bytes = 0
        self._header_count = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # --- connection ---

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(TooManyConnections(f"the server has {self.limits.max_connections} connections open"))
            return
        # A connection that never sends a request is closed, silently, after the header timeout.
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the head counted and a refused request answered with its limit."""
        if self._refused:
            return
        if self._head_pending:
            self._head_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            refusal, self._refusal = self._refusal, None
            self._refuse(refusal or MalformedHttp("the request is not valid HTTP/1.1"))
            return
        # Checked after the parser saw the data: the chunk may end the headers. The parser
        # joins what it holds at most once per chunk, so the excess it copies is one chunk.
        if self._head_pending and not self._refused:
            limit = self.limits.max_request_line_bytes + self.limits.max_header_bytes
            if self._head_bytes > limit:
                self._refuse(self._head_too_large())

    # --- parser callbacks ---

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._url_bytes = self._header_bytes = self._header_count = 0
        if self._head_timer is None:  # the next request on a kept-alive connection
            self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > self.limits.max_request_line_bytes:
            self._stop(UriTooLong(f"the request target is over {self.limits.max_request_line_bytes} bytes"))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._header_count > self.limits.max_headers:
            self._stop(HeadersTooLarge(f"the request has over {self.limits.max_headers} header fields"))
        if self._header_bytes > self.limits.max_header_bytes:
            self._stop(self._head_too_large())
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_pending = False
        self._head_bytes = 0
        self._cancel_head_timer()
        self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timed_out)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timed_out)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._head_pending = True
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    # --- timers ---

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._refused or self.transport.is_closing():
            return
        if self._head_bytes == 0 and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()  # nothing asked: nothing to answer
            return
        self._refuse(
            RequestTimeout(f"the request headers took over {self.limits.header_timeout_s:g} s to arrive")
        )

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self._refused or self.transport.is_closing() or self.cycle is None or not self.cycle.more_body:
            return
        if self.flow.read_paused:  # the application has not taken what came: not the client's delay
            self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timed_out)
            return
        self._refuse(RequestTimeout(f"the request body paused for over {self.limits.body_timeout_s:g} s"))

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_head_timer()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    # --- refusing ---

    def _head_too_large(self) -> HttpLimitError:
        if (
            self._url_bytes
            and self._header_count == 0
            and self._url_bytes >= self.limits.max_request_line_bytes
        ):
            return UriTooLong(f"the request target is over {self.limits.max_request_line_bytes} bytes")
        return HeadersTooLarge(f"the request headers are over {self.limits.max_header_bytes} bytes")

    def _stop(self, refusal: HttpLimitError) -> None:
        """From a parser callback: stop parsing (the parser raises, data_received answers)."""
        self._refusal = refusal
        raise _Refused

    def _refuse(self, refusal: HttpLimitError) -> None:
        """Answer `refusal` (unless an answer has started), then drop the connection after a linger."""
        self._refused = True
        self._cancel_timers()
        cycle = self.cycle
        started = cycle is not None and not cycle.response_complete and cycle.response_started
        if cycle is not None and not cycle.response_complete:
            # The application, if it is running, sees a client that went away; its answer goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        status = status_of(refusal).http
        if status >= 500 or isinstance(refusal, RequestTimeout):
            log.warning("HTTP %d to %s: %s", status, _peer(self.client), refusal)
        else:
            log.info("HTTP %d to %s: %s", status, _peer(self.client), refusal)
        if not started and not self.transport.is_closing():
            self.transport.write(_response_bytes(status, str(refusal), self._retry_after(refusal)))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()  # unread data at close would reset the connection, answer and all
        self.loop.call_later(LINGER_S, self.transport.close)

    def _retry_after(self, refusal: HttpLimitError) -> int | None:
        return self.limits.retry_after_s if isinstance(refusal, TooManyConnections) else None


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"


def _response_bytes(status: int, detail: str, retry_after: int | None) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    head = [
        STATUS_LINE[status],
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
    ]
    if retry_after is not None:
        head.append(b"retry-after: %d\r\n" % retry_after)
    return b"".join([*head, b"\r\n", body])


class BodyLimits:
    """Bodies bounded as they stream in, chunked or not: bytes (`default_bytes`, or a path's own
    in `path_bytes`) and, for JSON, the values they hold (`max_json_values`). 413 past either.

    A body that announces a length over the limit is refused before it is read; one that
    grows past it is refused when the route reads that far (the HTTPException raised from
    `receive` reaches the app's handler), and its connection closes rather than read the rest.
    """

    def __init__(
        self, app: ASGIApp, *, default_bytes: int, path_bytes: Mapping[str, int], max_json_values: int
    ) -> None:
        self.app = app
        self.default_bytes = default_bytes
        self.path_bytes = dict(path_bytes)
        self.max_json_values = max_json_values

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.path_bytes.get(scope["path"], self.default_bytes)
        announced = _content_length(scope)
        if announced is not None and announced > limit:
            await _too_large(send, f"the request body is {announced} bytes; the limit is {limit}")
            return
        json_body = _is_json(scope)
        size = values = 0

        async def counting_receive() -> Message:
            nonlocal size, values
            message = await receive()
            body = message.get("body", b"")
            if body:
                size += len(body)
                if size > limit:
                    raise _TooLarge(f"the request body is over the limit of {limit} bytes")
                if json_body:
                    # Every value after the first is opened by "[" or "{", or follows a ",".
                    values += body.count(b",") + body.count(b"[") + body.count(b"{")
                    if values > self.max_json_values:
                        raise _TooLarge(f"the JSON body holds over {self.max_json_values} values")
            return message

        await self.app(scope, counting_receive, send)


class _TooLarge(HTTPException):
    """Raised from `receive` inside a route: FastAPI re-raises HTTPExceptions from its body read,
    and its handler answers `{"detail": ...}`."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=status_of(PayloadTooLarge()).http, detail=detail, headers=_CLOSE)


# A body that will not be read is not left on the connection for the next request to wade through.
_CLOSE = {"connection": "close"}


async def _too_large(send: Send, detail: str) -> None:
    response = JSONResponse({"detail": detail}, status_code=status_of(PayloadTooLarge()).http, headers=_CLOSE)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:  # the server's parser refuses these before the app sees them
                return None
    return None


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            media_type = value.split(b";", 1)[0].strip().lower()
            return media_type.endswith(_JSON_TYPES)
    return False


class ShedMiddleware:
    """Refuses a query at once, before anything reads it, while the gateway's admission
    (clipsearch.overload) is full: under overload a refusal then costs no body parsing or
    validation. It takes no slot itself (a client slow to send its body must not hold one);
    the search core takes it once the query is read, and may still refuse it then."""

    def __init__(self, app: ASGIApp, *, prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefixes):
            core = getattr(scope["app"].state, "core", None)
            if core is not None and core.admission.full:
                core.metrics.shed.inc()
                exc = core.admission.refusal()
                refusal = Overloaded(str(exc), exc.retry_after_s)
                headers = {"Retry-After": str(math.ceil(refusal.retry_after_s))}
                response = JSONResponse(
                    {"detail": str(refusal)}, status_code=status_of(refusal).http, headers=headers
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
