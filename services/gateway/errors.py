"""What can go wrong with a request, and the one table that maps it to HTTP and gRPC.

The search core and the request models raise these; `status_of` gives the HTTP
status and the gRPC code for each, so both front ends answer a failure the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc


class GatewayError(Exception):
    """Base class; `str(error)` is the message shown to the caller."""


class QueryError(GatewayError):
    """The caller's mistake: a value out of bounds, an undecodable upload, an unknown filter field."""


class MalformedRequest(QueryError):
    """The request cannot be read at all: missing fields, wrong types, broken JSON."""


class PayloadTooLarge(QueryError):
    pass


class Unauthorized(GatewayError):
    pass


class NotFound(GatewayError):
    pass


class Unavailable(GatewayError):
    """A dependency (encoder, store, collection) is down or not ready; retry later."""


class Overloaded(Unavailable):
    """More work than the gateway or the encoder takes now; refused at once, retry after a moment."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(GatewayError):
    """The caller's deadline (gRPC) passed before the query could be answered."""


# Refusals by the HTTP server itself, before a request reaches the application (http_limits.py).


class HttpLimitError(GatewayError):
    pass


class MalformedHttp(HttpLimitError):
    """Not HTTP/1.1 the parser can read."""


class UriTooLong(HttpLimitError):
    pass


class HeadersTooLarge(HttpLimitError):
    pass


class RequestTimeout(HttpLimitError):
    """The client sent its request too slowly."""


class TooManyConnections(HttpLimitError):
    pass


class VersionGone(Unavailable):
    """The collection version a query was resolved to was dropped (a newer one replaced it)."""


@dataclass(frozen=True)
class Status:
    http: int
    grpc: grpc.StatusCode


# The most specific class wins (looked up along the error's MRO).
STATUSES: dict[type[BaseException], Status] = {
    QueryError: Status(400, grpc.StatusCode.INVALID_ARGUMENT),
    MalformedRequest: Status(422, grpc.StatusCode.INVALID_ARGUMENT),
    PayloadTooLarge: Status(413, grpc.StatusCode.INVALID_ARGUMENT),
    Unauthorized: Status(401, grpc.StatusCode.UNAUTHENTICATED),
    NotFound: Status(404, grpc.StatusCode.NOT_FOUND),
    Unavailable: Status(503, grpc.StatusCode.UNAVAILABLE),
    Overloaded: Status(503, grpc.StatusCode.RESOURCE_EXHAUSTED),
    DeadlineExceeded: Status(504, grpc.StatusCode.DEADLINE_EXCEEDED),
    # HTTP only (the gRPC server has its own framing limits); the codes are their nearest kin.
    MalformedHttp: Status(400, grpc.StatusCode.INVALID_ARGUMENT),
    UriTooLong: Status(414, grpc.StatusCode.INVALID_ARGUMENT),
    HeadersTooLarge: Status(431, grpc.StatusCode.INVALID_ARGUMENT),
    RequestTimeout: Status(408, grpc.StatusCode.DEADLINE_EXCEEDED),
    TooManyConnections: Status(503, grpc.StatusCode.RESOURCE_EXHAUSTED),
}
INTERNAL = Status(500, grpc.StatusCode.INTERNAL)


def status_of(error: BaseException) -> Status:
    for kind in type(error).__mro__:
        if kind in STATUSES:
            return STATUSES[kind]
    return INTERNAL
