"""Optional shared-key authentication: metadata `x-api-key` must match the configured key."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

API_KEY_HEADER = "x-api-key"
# Probes and grpcurl discovery stay open: they reveal nothing the protos do not.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

if TYPE_CHECKING:  # the stubs make these generic; the runtime classes are not
    Handler = grpc.RpcMethodHandler[Any, Any]
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    _Interceptor = grpc.aio.ServerInterceptor


class ApiKeyInterceptor(_Interceptor):
    def __init__(self, api_key: str) -> None:
        self._key = api_key.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        if self._authorised(handler_call_details.invocation_metadata):
            return handler
        return _refusing(handler)

    def _authorised(self, metadata: Any) -> bool:
        for key, value in metadata or ():
            if key == API_KEY_HEADER:
                supplied = value if isinstance(value, bytes) else str(value).encode()
                return hmac.compare_digest(supplied, self._key)
        return False


async def _refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"missing or wrong {API_KEY_HEADER} metadata")


def _refusing(handler: Handler) -> Handler:
    """A handler of the same shape as `handler` that only refuses the call."""
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_refuse, **serializers)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(_refuse, **serializers)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_refuse, **serializers)
    return grpc.unary_unary_rpc_method_handler(_refuse, **serializers)
