"""What can go wrong with a query, independent of HTTP or gRPC.

The search core raises these; api.py maps them to HTTP statuses and
grpc_server.py to gRPC codes, so both front ends answer the same way.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class; `str(error)` is the message shown to the caller."""

    http_status = 500


class QueryError(GatewayError):
    """The caller's mistake: bad parameters, undecodable upload, unknown filter field."""

    http_status = 400


class PayloadTooLarge(QueryError):
    http_status = 413


class NotFound(GatewayError):
    http_status = 404


class Unavailable(GatewayError):
    """A dependency (encoder, store, collection) is down or not ready; retry later."""

    http_status = 503
