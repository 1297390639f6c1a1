"""The gRPC twin of the HTTP API: clipsearch.v1.Search, plus health and reflection.

It builds the same request models as the HTTP routes (schemas.py) and calls the same
SearchCore; failures get their gRPC code from the one table in errors.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError

from clipsearch.grpc_guard import DecodeGuard
from clipsearch.grpc_request_id import RequestIdInterceptor
from clipsearch.overload import follow_deadline, pushback_metadata
from clipsearch.v1 import search_pb2, search_pb2_grpc
from services.gateway.deps import API_KEY_HEADER, key_matches
from services.gateway.errors import GatewayError, Overloaded, QueryError, status_of
from services.gateway.schemas import (
    MAX_LABELS_READ,
    MAX_PARTS,
    MAX_TEMPLATES,
    ClassifyQuery,
    ImageOptions,
    MixedQuery,
    Normalization,
    QueryPart,
    SearchOptions,
    SearchResponse,
    Target,
    TextQuery,
    check_count,
    filter_from_struct,
    reading,
    request_error,
)
from services.gateway.search import SearchCore
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVICE_NAME = search_pb2.DESCRIPTOR.services_by_name["Search"].full_name
NORMALIZATIONS: dict[int, Normalization] = {
    search_pb2.NORMALIZATION_AUTO: "auto",
    search_pb2.NORMALIZATION_OFF: "off",
}
TARGETS: dict[int, Target] = {
    search_pb2.TARGET_UNSPECIFIED: "images",
    search_pb2.TARGET_IMAGES: "images",
    search_pb2.TARGET_CAPTIONS: "captions",
}
DEFAULT_K = 10
READINESS_INTERVAL_S = 5.0
# Health and reflection stay open so probes and grpcurl work without a key.
_OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class SearchServicer(search_pb2_grpc.SearchServicer):
    def __init__(self, core: SearchCore) -> None:
        self.core = core

    async def _answer(
        self, operation: str, context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[T]]
    ) -> T:
        started = time.perf_counter()
        outcome = "OK"
        follow_deadline(context)  # the encoder call and the queues give it no more time than it has
        try:
            try:
                return await call()
            except ValidationError as exc:  # a request model refused what the message holds
                raise request_error(exc.errors()) from None
        except GatewayError as exc:
            code = status_of(exc).grpc
            outcome = code.name
            trailers = pushback_metadata(exc.retry_after_s) if isinstance(exc, Overloaded) else ()
            await context.abort(code, str(exc), trailers)
        except Exception:
            outcome = "INTERNAL"
            log.exception("unhandled error in %s", operation)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; it has been logged")
        finally:
            self.core.metrics.observe("grpc", operation, outcome, time.perf_counter() - started)
        raise AssertionError("unreachable: abort raises")

    async def SearchText(
        self, request: search_pb2.TextQuery, context: grpc.aio.ServicerContext
    ) -> search_pb2.SearchResponse:
        async def run() -> search_pb2.SearchResponse:
            with reading():
                query = TextQuery(**_options(request.options).model_dump(), query=request.query)
            return _search_reply(await self.core.search_text(query))

        return await self._answer("SearchText", context, run)

    async def SearchImage(
        self, request: search_pb2.ImageQuery, context: grpc.aio.ServicerContext
    ) -> search_pb2.SearchResponse:
        async def run() -> search_pb2.SearchResponse:
            normalization = NORMALIZATIONS.get(request.normalization)
            if normalization is None:
                raise QueryError(f"unknown normalization {request.normalization}")
            options = ImageOptions(**_options(request.options).model_dump(), normalization=normalization)
            return _search_reply(await self.core.search_image(request.image, options))

        return await self._answer("SearchImage", context, run)

    async def SearchSketch(
        self, request: search_pb2.ImageQuery, context: grpc.aio.ServicerContext
    ) -> search_pb2.SearchResponse:
        async def run() -> search_pb2.SearchResponse:
            options = ImageOptions(**_options(request.options).model_dump())
            return _search_reply(await self.core.search_image(request.image, options, sketch=True))

        return await self._answer("SearchSketch", context, run)

    async def SearchMixed(
        self, request: search_pb2.MixedQuery, context: grpc.aio.ServicerContext
    ) -> search_pb2.SearchResponse:
        async def run() -> search_pb2.SearchResponse:
            with reading():
                check_count(len(request.parts), MAX_PARTS, "parts in a mixed query")
                parts = [_part(part, position) for position, part in enumerate(request.parts)]
                query = MixedQuery(**_options(request.options).model_dump(), parts=parts)
            return _search_reply(await self.core.search_mixed(query))

        return await self._answer("SearchMixed", context, run)

    async def Classify(
        self, request: search_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.ClassifyResponse:
        async def run() -> search_pb2.ClassifyResponse:
            which = request.WhichOneof("content")
            if which is None:
                raise QueryError("give an image or a sketch")
            with reading():
                check_count(len(request.labels), MAX_LABELS_READ, "labels")
                check_count(len(request.templates), MAX_TEMPLATES, "templates")
                query = ClassifyQuery(
                    kind="image" if which == "image" else "sketch",
                    labels=list(request.labels),
                    templates=list(request.templates),
                    temperature=request.temperature or None,
                    collection=request.collection,
                )
            result = await self.core.classify(request.image if which == "image" else request.sketch, query)
            return search_pb2.ClassifyResponse(
                scores=[
                    search_pb2.LabelScore(label=s.label, probability=s.probability) for s in result.scores
                ],
                took_ms=result.took_ms,
                model=result.model,
            )

        return await self._answer("Classify", context, run)

    async def ListCollections(
        self, request: search_pb2.ListCollectionsRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.ListCollectionsResponse:
        async def run() -> search_pb2.ListCollectionsResponse:
            listed = await self.core.list_collections()
            return search_pb2.ListCollectionsResponse(
                collections=[
                    search_pb2.CollectionInfo(
                        name=c.name,
                        model=c.model or "",
                        fingerprint=c.fingerprint,
                        points=c.points,
                        vectors=c.vectors,
                        filter_fields={
                            field: search_pb2.FieldValues(values=[str(v) for v in values or []])
                            for field, values in c.filter_fields.items()
                        },
                        sketch_normalization=c.sketch_normalization or "",
                        ready=c.ready,
                        problem=c.problem or "",
                    )
                    for c in listed.collections
                ],
                default_collection=listed.default_collection,
            )

        return await self._answer("ListCollections", context, run)


def _search_reply(result: SearchResponse) -> search_pb2.SearchResponse:
    hits = []
    for hit in result.hits:
        payload = struct_pb2.Struct()
        payload.update(hit.payload)
        hits.append(
            search_pb2.Hit(id=hit.id, score=hit.score, payload=payload, image_url=hit.image_url or "")
        )
    return search_pb2.SearchResponse(
        hits=hits,
        took_ms=result.took_ms,
        model=result.model,
        collection=result.collection,
        normalization=result.normalization or "",
    )


def _options(options: search_pb2.QueryOptions) -> SearchOptions:
    target = TARGETS.get(options.target)
    if target is None:
        raise QueryError(f"unknown target {options.target}")
    with reading("the search options"):
        query_filter = filter_from_struct(options.filter) if options.HasField("filter") else None
        return SearchOptions(
            k=options.k or DEFAULT_K,
            offset=options.offset,
            filter=query_filter,
            target=target,
            collection=options.collection,
        )


def _part(part: search_pb2.QueryPart, position: int) -> QueryPart:
    which = part.WhichOneof("content")
    if which is None:
        raise QueryError(f"part {position} has no text, image or sketch")
    return QueryPart(kind=which, content=getattr(part, which), weight=part.weight or 1.0)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Requires metadata x-api-key (constant-time compare) on the Search service."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, f"missing or wrong API key ({API_KEY_HEADER})"
            )

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if method.startswith(_OPEN_METHOD_PREFIXES):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get(API_KEY_HEADER)
        if isinstance(given, bytes):
            given = given.decode(errors="replace")
        if key_matches(self.api_key, given):
            return await continuation(handler_call_details)
        return self._deny


class GrpcGateway:
    """The gRPC server with its readiness follower; `start()` returns the bound port."""

    def __init__(self, core: SearchCore, settings: GatewaySettings) -> None:
        self.core = core
        self.settings = settings
        interceptors: list[grpc.aio.ServerInterceptor] = [RequestIdInterceptor(issue=True)]
        if settings.api_key:
            interceptors.append(ApiKeyInterceptor(settings.api_key.get_secret_value()))
        # Innermost: a caller without the key is refused as such, whatever bytes it sent.
        interceptors.append(
            DecodeGuard(
                lambda method: core.metrics.observe(
                    "grpc", method.rsplit("/", 1)[-1], "INVALID_ARGUMENT", 0.0
                )
            )
        )
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", settings.max_upload_bytes + 1024 * 1024),
                ("grpc.max_send_message_length", 16 * 1024 * 1024),
            ],
        )
        search_pb2_grpc.add_SearchServicer_to_server(SearchServicer(core), self.server)
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # missing from the stubs
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )
        self._readiness: asyncio.Task[None] | None = None

    async def start(self) -> int:
        port = self.server.add_insecure_port(f"{self.settings.host}:{self.settings.grpc_port}")
        if port == 0:
            raise RuntimeError(f"cannot bind gRPC to {self.settings.host}:{self.settings.grpc_port}")
        await self.server.start()
        # The process serves as soon as it listens; the Search service follows readiness.
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._readiness = asyncio.create_task(_follow_readiness(self.core, self.health))
        return port

    async def stop(self, grace_s: float = 2.0) -> None:
        if self._readiness is not None:
            self._readiness.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._readiness
        await self.server.stop(grace_s)


async def _follow_readiness(core: SearchCore, health_servicer: Any) -> None:
    while True:
        try:
            ready = (await core.readiness()).ready
        except Exception:  # a probe must never kill the loop
            log.exception("readiness check failed")
            ready = False
        status = (
            health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await health_servicer.set(SERVICE_NAME, status)
        await asyncio.sleep(READINESS_INTERVAL_S)


@contextlib.asynccontextmanager
async def running_grpc_server(core: SearchCore, settings: GatewaySettings) -> AsyncIterator[int]:
    """Serve for the duration of the block; yields the port."""
    gateway = GrpcGateway(core, settings)
    port = await gateway.start()
    try:
        yield port
    finally:
        await gateway.stop()
