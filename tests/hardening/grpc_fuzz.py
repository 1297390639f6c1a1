"""Calling the gRPC services with a bad request and checking how it was answered."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from clipsearch.v1 import encoder_pb2, search_pb2
from tests.hardening.tally import TALLY

# NOT_FOUND: a model or collection the call names that is not served (a reasoned refusal too).
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
CALL_TIMEOUT_S = 30.0


def call(method: Callable[..., Any], request: Message, surface: str) -> grpc.StatusCode:
    """One call; fail on INTERNAL/UNKNOWN (or any other non-answer); tally it by its wire bytes."""
    name = getattr(method, "_method", b"?")
    TALLY_KEY = bytes(name) + b"\n" + request.SerializeToString(deterministic=True)
    try:
        reply = method(request, timeout=CALL_TIMEOUT_S)
        code = grpc.StatusCode.OK
        check_reply(reply)
    except grpc.RpcError as exc:
        code = exc.code()
        details = exc.details() or ""
        assert code in ALLOWED, f"{code.name}: {details[:300]} for {name!r} {str(request)[:300]}"
        assert details.strip(), f"INVALID_ARGUMENT without a message for {str(request)[:300]}"
        assert "Traceback" not in details
    TALLY.record(surface, TALLY_KEY, code.name)
    return code


def check_reply(reply: Message) -> None:
    if isinstance(reply, search_pb2.ClassifyResponse):
        assert all(math.isfinite(score.probability) for score in reply.scores), str(reply)[:300]
    if isinstance(reply, encoder_pb2.EmbedResponse):
        assert all(math.isfinite(v) for e in reply.embeddings for v in e.values)
