"""The FastAPI application: routes, error mapping, metrics, upload cap, request ids, the web page."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clipsearch.logs import REQUEST_ID, REQUEST_ID_HEADER, new_request_id, valid_request_id
from services.gateway.api import api, media, probes
from services.gateway.deps import API_KEY_HEADER, build_core
from services.gateway.errors import GatewayError, Overloaded, status_of
from services.gateway.http_limits import BodyLimits, ShedMiddleware
from services.gateway.metrics import GatewayMetrics
from services.gateway.schemas import MAX_QUERY_BODY_BYTES, request_error
from services.gateway.search import SearchCore
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
# Room for multipart framing and the other form fields around one upload.
FORM_OVERHEAD_BYTES = 64 * 1024
# Whole-body cap: one upload in a form, or a mixed query's base64 parts (each capped again after decoding).
BODY_UPLOADS = 2
# Form fields other than the file: candidate labels may come one per field.
MAX_FORM_FIELDS = 1_024
MAX_FORM_FIELD_BYTES = 64 * 1024


def create_app(settings: GatewaySettings | None = None, core: SearchCore | None = None) -> FastAPI:
    """The gateway app. Given a `core`, the caller owns it (one core shared with the gRPC server);
    otherwise the app builds its own on startup and closes it on shutdown."""
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = core is None
        app.state.core = core if core is not None else build_core(settings, app.state.metrics)
        try:
            yield
        finally:
            if owned:
                await app.state.core.close()

    max_body_bytes = BODY_UPLOADS * settings.max_upload_bytes + FORM_OVERHEAD_BYTES
    app = FastAPI(
        title="clipsearch gateway",
        summary="Search an image collection by text, image or sketch with a CLIP model.",
        version="1.0",
        lifespan=lifespan,
        form_limits={"max_files": 1, "max_fields": MAX_FORM_FIELDS, "max_part_size": MAX_FORM_FIELD_BYTES},
    )
    app.state.settings = settings
    app.state.metrics = core.metrics if core is not None else GatewayMetrics()

    app.include_router(api)
    app.include_router(media)
    app.include_router(probes)
    app.add_exception_handler(GatewayError, _gateway_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(ValidationError, _validation_error)  # type: ignore[arg-type]

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["content-type", API_KEY_HEADER, REQUEST_ID_HEADER],
            expose_headers=[REQUEST_ID_HEADER],
        )
    app.add_middleware(
        BodyLimits,
        default_bytes=max_body_bytes,
        path_bytes={f"{api.prefix}/search/text": MAX_QUERY_BODY_BYTES},
        max_json_values=settings.max_json_values,
    )
    # While the admission is full, queries are refused before their bodies are read: a refusal costs little.
    app.add_middleware(ShedMiddleware, prefixes=(f"{api.prefix}/search/", f"{api.prefix}/classify"))
    app.add_middleware(GuardMiddleware, metrics=app.state.metrics)
    app.add_middleware(RequestIdMiddleware)  # outermost: every answer, even a 413 or 500, carries it
    return app


async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
    headers = {"Retry-After": str(math.ceil(exc.retry_after_s))} if isinstance(exc, Overloaded) else None
    return JSONResponse({"detail": str(exc)}, status_code=status_of(exc).http, headers=headers)


async def _validation_error(request: Request, exc: RequestValidationError | ValidationError) -> JSONResponse:
    """A request model refused the request: while FastAPI read it, or when a route built one."""
    return await _gateway_error(request, request_error(exc.errors()))


class GuardMiddleware:
    """Records metrics, and turns unexpected exceptions into a JSON 500 without a traceback
    (logged here instead). A client that goes away mid-request is no error of ours."""

    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            status["code"] = 499  # nginx's "client closed request", for the metrics only
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if not status["sent"]:
                await _send_json(tracking_send, 500, "internal error; it has been logged")
        finally:
            route = scope.get("route")
            operation = getattr(route, "path", "unmatched")
            self.metrics.observe("http", operation, str(status["code"]), time.perf_counter() - started)


class RequestIdMiddleware:
    """Runs each request with an id (a valid X-Request-ID from the client, else a new one) in
    `clipsearch.logs.REQUEST_ID`, returns it in the response's X-Request-ID, logs the request at DEBUG."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = _header(scope, REQUEST_ID_HEADER.encode())
        request_id = valid_request_id(sent.decode("latin-1") if sent else None) or new_request_id()
        header = (REQUEST_ID_HEADER.encode(), request_id.encode())
        token = REQUEST_ID.set(request_id)
        started, status = time.perf_counter(), [0]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if log.isEnabledFor(logging.DEBUG):
                took_ms = (time.perf_counter() - started) * 1000
                log.debug("%s %s %d in %.1f ms", scope.get("method"), scope.get("path"), status[0], took_ms)
            REQUEST_ID.reset(token)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value)
    return None


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = JSONResponse({"detail": detail}, status_code=status)
    await send({"type": "http.response.start", "status": status, "headers": body.raw_headers})
    await send({"type": "http.response.body", "body": body.body})
