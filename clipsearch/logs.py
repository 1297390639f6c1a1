"""Logging for every clipsearch process, configured once: plain text, or JSON lines.

A request id travels with each request through the gateway and the encoder in a
context variable (`REQUEST_ID`); a filter on the handler adds it to every record, so
any log line written while a request is handled names it, in either format.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import time
from contextvars import ContextVar
from typing import IO, Any, Literal

LogFormat = Literal["text", "json"]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s"
# Libraries that log every HTTP call they make at INFO (qdrant-client talks to a server through httpx).
CHATTY_LOGGERS = ("httpx", "httpcore")
# gRPC's event-loop bookkeeping: a DEBUG line for every call, which would bury ours.
DEBUG_NOISE = ("grpc._cython.cygrpc",)

HANDLER_NAME = "clipsearch"  # the handler configure_logging installs (and replaces when called again)
REQUEST_ID_HEADER = "x-request-id"
# One id as a client may send it: short, printable, nothing that could forge a log line or a JSON field.
_ONE_ID = r"[A-Za-z0-9][A-Za-z0-9._:/+=-]{0,127}"
_REQUEST_ID = re.compile(rf"{_ONE_ID}", re.ASCII)
# Calls that serve several requests (the gateway's shared text-embedding calls) carry all their ids.
_REQUEST_IDS = re.compile(rf"{_ONE_ID}(?:,{_ONE_ID}){{0,255}}", re.ASCII)

REQUEST_ID: ContextVar[str | None] = ContextVar("clipsearch_request_id", default=None)


def new_request_id() -> str:
    return secrets.token_hex(8)


def valid_request_id(value: str | None, *, several: bool = False) -> str | None:
    """`value` if it is a usable request id (with `several`, a comma-separated list of them), else None."""
    if not value:
        return None
    pattern = _REQUEST_IDS if several else _REQUEST_ID
    return value if pattern.fullmatch(value) else None


def current_request_id() -> str | None:
    return REQUEST_ID.get()


def joined_request_ids(ids: list[str | None]) -> str | None:
    """The ids of the requests one shared call serves, each once, in order; None when none has one."""
    distinct = list(dict.fromkeys(value for value in ids if value))
    return ",".join(distinct) if distinct else None


class RequestIdFilter(logging.Filter):
    """Adds `request_id` (None outside a request) and `request_tag` (" [id]" or "") to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = REQUEST_ID.get()
        record.request_id = request_id
        record.request_tag = f" [{request_id}]" if request_id else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request_id, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


class _StandardErrorHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time (pytest swaps it per test)."""

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass  # always sys.stderr


def parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    name = level.strip().upper()
    if name not in LOG_LEVELS:
        raise ValueError(f"log level {level!r}: use one of {', '.join(LOG_LEVELS).lower()}")
    return int(logging.getLevelName(name))


def configure_logging(level: str | int = "INFO", log_format: LogFormat = "text") -> None:
    """Send every logger's records to stderr in `log_format`, at `level` and above.

    Calling it again replaces the handler it installed (handlers others added stay).
    """
    numeric = parse_level(level)
    handler = _StandardErrorHandler()
    handler.set_name(HANDLER_NAME)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if numeric > logging.DEBUG else logging.NOTSET)
    for name in DEBUG_NOISE:
        logging.getLogger(name).setLevel(logging.INFO)
