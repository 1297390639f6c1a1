"""The request id on gRPC servers: read from metadata `x-request-id` into `clipsearch.logs.REQUEST_ID`.

The gateway issues one for each call that comes without a valid one and returns it in
the trailing metadata; the encoder takes the one the gateway (or the indexer) sent.
Each call is logged at DEBUG with its status and time, so its id can be followed.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from clipsearch.logs import REQUEST_ID, REQUEST_ID_HEADER, new_request_id, valid_request_id

log = logging.getLogger(__name__)
# Probes and discovery (health, reflection): open without a key, neither logged nor given an id.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

if TYPE_CHECKING:  # the stubs make these generic; the runtime classes are not
    Handler = grpc.RpcMethodHandler[Any, Any]
    Context = grpc.aio.ServicerContext[Any, Any]
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    ServerInterceptor = grpc.aio.ServerInterceptor


class RequestIdInterceptor(ServerInterceptor):
    """With `issue`, calls without a valid id get a new one, returned as trailing metadata;
    without, the id is only taken from the caller (a list of ids, for calls serving several)."""

    def __init__(self, *, issue: bool) -> None:
        self._issue = issue

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        sent = None
        for key, value in details.invocation_metadata or ():
            if key == REQUEST_ID_HEADER:
                sent = value if isinstance(value, str) else value.decode("ascii", "replace")
        request_id = valid_request_id(sent, several=not self._issue)
        if request_id is None and self._issue:
            request_id = new_request_id()
        return _with_request_id(handler, details.method, request_id, echo=self._issue)


def _with_request_id(handler: Handler, method: str, request_id: str | None, *, echo: bool) -> Handler:
    """A handler like `handler` that runs with REQUEST_ID set and logs the call at DEBUG.

    Each call runs in a task of its own, so the variable set here ends with the call.
    """

    def begin(context: Context) -> float:
        REQUEST_ID.set(request_id)
        if echo and request_id:
            context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
        return time.perf_counter()

    def end(context: Context, started: float, error: BaseException | None) -> None:
        if log.isEnabledFor(logging.DEBUG):
            code = context.code()  # set by an abort; None when the handler returned
            outcome = code.name if code is not None else "OK" if error is None else type(error).__name__
            log.debug("%s %s in %.1f ms", method, outcome, (time.perf_counter() - started) * 1000)

    behaviour: Any
    if handler.response_streaming:
        inner_stream: Any = handler.unary_stream or handler.stream_stream

        async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
            started, error = begin(context), None
            try:
                replies = inner_stream(request, context)
                if inspect.isawaitable(replies):  # a handler that writes with context.write, or aborts
                    await replies
                else:
                    async for reply in replies:
                        yield reply
            except BaseException as exc:
                error = exc
                raise
            finally:
                end(context, started, error)

        behaviour = streaming
    else:
        inner: Any = handler.unary_unary or handler.stream_unary

        async def unary(request: Any, context: Context) -> Any:
            started, error = begin(context), None
            try:
                return await inner(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                end(context, started, error)

        behaviour = unary

    return handler_like(handler, behaviour)


def handler_like(handler: Handler, behaviour: Callable[..., Any]) -> Handler:
    """A handler of the same shape (streaming, serializers) as `handler` that runs `behaviour`."""
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behaviour, **serializers)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behaviour, **serializers)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behaviour, **serializers)
    return grpc.unary_unary_rpc_method_handler(behaviour, **serializers)
