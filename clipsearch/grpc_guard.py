"""Requests that do not decode are the caller's error: INVALID_ARGUMENT, logged as a warning.

grpc-python deserializes a request before the servicer runs; when the bytes are not a
valid message (garbage, invalid UTF-8 in a `string` field, a Struct nested past the
parser's depth limit), the exception escapes the library's handler plumbing, which logs
an ERROR with a traceback and answers UNKNOWN. `DecodeGuard` wraps every method's
deserializer so that a failure becomes a marker value instead, and the method's
behaviour so that a marker is answered INVALID_ARGUMENT naming the message type, with
one warning line and no traceback. Both gRPC servers (the encoder and the gateway's
Search service) install it as their innermost interceptor.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from clipsearch.grpc_request_id import Handler, ServerInterceptor, handler_like

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from clipsearch.grpc_request_id import Context
else:
    Context = Any

UndecodableObserver = Callable[[str], None]


@dataclass(frozen=True)
class Undecodable:
    """What a guarded deserializer returns for bytes that are not a valid request."""

    message_type: str
    reason: str


class DecodeGuard(ServerInterceptor):
    """Undecodable requests are refused with INVALID_ARGUMENT; `on_refused(method)` counts them."""

    def __init__(self, on_refused: UndecodableObserver | None = None) -> None:
        self._on_refused = on_refused

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None or not _is_async(handler):
            return handler
        return _guarded(handler, details.method, self._refuse)

    async def _refuse(self, method: str, bad: Undecodable, context: Context) -> None:
        log.warning(
            "%s: refused a request that does not decode as %s (%s)", method, bad.message_type, bad.reason
        )
        if self._on_refused is not None:
            self._on_refused(method)
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request does not decode as {bad.message_type}: {bad.reason}",
        )


Refuse = Callable[[str, Undecodable, Context], Awaitable[None]]


def _safe_deserializer(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    # The generated code passes `MessageType.FromString`; its class names the message.
    descriptor = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    message_type = getattr(descriptor, "full_name", None) or "the expected message"

    def deserialize_or_mark(raw: bytes) -> Any:
        if descriptor is not None and len(raw) > SCAN_ABOVE_BYTES and not within_budget(raw, descriptor):
            return Undecodable(message_type, f"it holds more than {MAX_REQUEST_VALUES:,} values")
        try:
            return deserialize(raw)
        except Exception as exc:  # whatever the parser raises, the bytes are the caller's
            reason = str(exc) or type(exc).__name__
            return Undecodable(message_type, reason[:200])

    return deserialize_or_mark


# Parsed, a message costs some 20 times the wire bytes of its smallest elements (an empty string
# in a repeated field is 2 bytes on the wire and a few dozen in memory), so an 11 MB request of
# empty labels would cost 200 MB before any check of ours ran. Messages over SCAN_ABOVE_BYTES
# are walked first, field by field along their schema (a bytes or string field is skipped whole),
# and refused past MAX_REQUEST_VALUES elements: the walk costs at most that many steps, and no
# request of the APIs needs a third of it (the largest: 1,000 filter values, about 2,500).
SCAN_ABOVE_BYTES = 16 * 1024
MAX_REQUEST_VALUES = 10_000
_MAX_DEPTH = 100  # the parser's own recursion limit


class _OverBudget(Exception):
    pass


def within_budget(raw: bytes, descriptor: Any, budget: int = MAX_REQUEST_VALUES) -> bool:
    """Whether the message in `raw` holds at most `budget` elements (walked without parsing)."""
    remaining = [budget]
    try:
        _walk(memoryview(raw), 0, len(raw), descriptor, remaining, 0)
    except _OverBudget:
        return False
    except (IndexError, ValueError):  # malformed: the parser will say how
        return True
    return True


def _varint(data: memoryview, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _walk(
    data: memoryview, position: int, end: int, descriptor: Any, remaining: list[int], depth: int
) -> None:
    if depth > _MAX_DEPTH:
        raise _OverBudget
    while position < end:
        remaining[0] -= 1
        if remaining[0] < 0:
            raise _OverBudget
        tag, position = _varint(data, position)
        wire_type = tag & 7
        if wire_type == 0:
            _, position = _varint(data, position)
        elif wire_type == 1:
            position += 8
        elif wire_type == 5:
            position += 4
        elif wire_type == 2:
            length, position = _varint(data, position)
            field = descriptor.fields_by_number.get(tag >> 3)
            if field is not None and field.message_type is not None:
                _walk(data, position, min(position + length, end), field.message_type, remaining, depth + 1)
            position += length
        else:
            return  # groups or no wire type at all: the parser refuses or skips them


def _is_async(handler: Handler) -> bool:
    behaviour = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    return inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)


async def _replies(replies: Any) -> AsyncIterator[Any]:
    """A streaming handler's replies: an async generator's, or none from one that writes with
    `context.write` (a coroutine)."""
    if inspect.isawaitable(replies):
        await replies
        return
    async for reply in replies:
        yield reply


def _guarded(handler: Handler, method: str, refuse: Refuse) -> Handler:
    """A handler like `handler` whose requests that do not decode are refused before it runs."""
    deserialize: Any = handler.request_deserializer
    guarded = handler_like(handler, _checking_behaviour(handler, method, refuse))
    # grpc's handlers are namedtuples at run time; the stubs know only the abstract class.
    return guarded._replace(request_deserializer=_safe_deserializer(deserialize))  # type: ignore[attr-defined]


def _checking_behaviour(handler: Handler, method: str, refuse: Refuse) -> Callable[..., Any]:
    """`handler`'s behaviour, refusing the requests (or the stream's messages) that did not decode."""

    async def checked(requests: AsyncIterable[Any], context: Context) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, Undecodable):
                await refuse(method, request, context)  # raises grpc's AbortError
            yield request

    if handler.request_streaming and handler.response_streaming:
        inner_stream_stream: Any = handler.stream_stream

        async def stream_stream(requests: AsyncIterable[Any], context: Context) -> AsyncIterator[Any]:
            async for reply in _replies(inner_stream_stream(checked(requests, context), context)):
                yield reply

        return stream_stream
    if handler.request_streaming:
        inner_stream_unary: Any = handler.stream_unary

        async def stream_unary(requests: AsyncIterable[Any], context: Context) -> Any:
            return await inner_stream_unary(checked(requests, context), context)

        return stream_unary
    if handler.response_streaming:
        inner_unary_stream: Any = handler.unary_stream

        async def unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await refuse(method, request, context)
            async for reply in _replies(inner_unary_stream(request, context)):
                yield reply

        return unary_stream
    inner_unary_unary: Any = handler.unary_unary

    async def unary_unary(request: Any, context: Context) -> Any:
        if isinstance(request, Undecodable):
            await refuse(method, request, context)
        return await inner_unary_unary(request, context)

    return unary_unary
