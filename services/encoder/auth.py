"""Optional shared-key authentication: metadata `x-api-key` must match the configured key."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from clipsearch.grpc_request_id import OPEN_PREFIXES, Handler, ServerInterceptor, handler_like

API_KEY_HEADER = "x-api-key"


class ApiKeyInterceptor(ServerInterceptor):
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
    return handler_like(handler, _refuse)
