"""HTTP routes under /api/v1 (the request and response models are in schemas.py)."""

from __future__ import annotations

import base64
import binascii
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import Field, model_validator
from starlette.concurrency import run_in_threadpool

from services.gateway.deps import get_core, require_api_key
from services.gateway.errors import NotFound, PayloadTooLarge, QueryError
from services.gateway.media_files import MediaFile, read_media
from services.gateway.schemas import (
    MAX_LABELS_READ,
    MAX_QUERY_BODY_BYTES,
    ClassifyQuery,
    ClassifyResponse,
    CollectionsResponse,
    ErrorOut,
    ImageOptions,
    MixedQuery,
    QueryPart,
    RequestModel,
    SearchOptions,
    SearchResponse,
    TextQuery,
    check_count,
    filter_from_json,
    reading,
)
from services.gateway.search import SearchCore

Core = Annotated[SearchCore, Depends(get_core)]

api = APIRouter(prefix="/api/v1", dependencies=[Depends(require_api_key)])
# Media is public: <img> tags cannot send an API key, and keys are content hashes.
media = APIRouter(prefix="/api/v1")
probes = APIRouter()


# --- the JSON form of a mixed query (uploads base64-encoded) ---


class PartBody(RequestModel):
    """One part of a mixed query: exactly one of text, image, sketch (images base64-encoded)."""

    text: str | None = None
    image: str | None = Field(default=None, description="base64-encoded image file")
    sketch: str | None = Field(default=None, description="base64-encoded canvas drawing")
    weight: float = Field(default=1.0, description="negative steers away; 0 counts as 1")

    @model_validator(mode="after")
    def exactly_one(self) -> PartBody:
        given = [name for name in ("text", "image", "sketch") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("each part needs exactly one of text, image, sketch")
        return self

    def part(self, position: int) -> QueryPart:
        if self.text is not None:
            return QueryPart(kind="text", content=self.text, weight=self.weight)
        kind: Literal["image", "sketch"] = "image" if self.image is not None else "sketch"
        encoded = self.image if self.image is not None else self.sketch
        try:
            data = base64.b64decode(encoded or "", validate=True)
        except (binascii.Error, ValueError):
            raise QueryError(f"part {position} {kind} is not valid base64") from None
        return QueryPart(kind=kind, content=data, weight=self.weight)


class MixedQueryBody(SearchOptions):
    parts: list[PartBody]

    def query(self) -> MixedQuery:
        parts = [part.part(position) for position, part in enumerate(self.parts)]
        return MixedQuery(**self.options().model_dump(), parts=parts)


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "bad query"},
    401: {"model": ErrorOut, "description": "missing or wrong API key"},
    413: {"model": ErrorOut, "description": "upload too large"},
    422: {"model": ErrorOut, "description": "malformed request"},
    503: {"model": ErrorOut, "description": "encoder or store unavailable"},
}


# --- helpers ---


async def read_upload(request: Request, upload: UploadFile) -> bytes:
    limit: int = request.app.state.settings.max_upload_bytes
    if upload.size is not None and upload.size > limit:
        raise PayloadTooLarge(f"the upload is {upload.size} bytes; the limit is {limit}")
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"the upload is over the limit of {limit} bytes")
    return data


def form_options(
    k: int, offset: int, filter: str | None, target: str, collection: str | None, normalization: str = "auto"
) -> ImageOptions:
    """Options given as form fields or query parameters (the filter as a JSON string)."""
    with reading("the search options"):
        return ImageOptions(
            k=k,
            offset=offset,
            filter=filter_from_json(filter),
            target=target,  # type: ignore[arg-type]  # checked by the model
            collection=collection,
            normalization=normalization,  # type: ignore[arg-type]
        )


CollectionField = Annotated[str | None, Form(description="the collection to search; empty: the default")]


# --- search ---


@api.post("/search/text", response_model=SearchResponse, responses=ERRORS, max_body_size=MAX_QUERY_BODY_BYTES)
async def search_text(body: TextQuery, core: Core) -> SearchResponse:
    """Images (or captions) closest to a text query."""
    return await core.search_text(body)


@api.get("/search/text", response_model=SearchResponse, responses=ERRORS)
async def search_text_get(
    core: Core,
    q: Annotated[str, Query(description="the text query")] = "",
    k: int = 10,
    offset: int = 0,
    filter: Annotated[str | None, Query(description="JSON payload filter")] = None,
    target: Annotated[str, Query(description="images | captions")] = "images",
    collection: Annotated[str | None, Query(description="the collection; empty: the default")] = None,
) -> SearchResponse:
    """The same as POST, for links and curl."""
    options = form_options(k, offset, filter, target, collection).options()
    with reading():
        query = TextQuery(**options.model_dump(), query=q)
    return await core.search_text(query)


@api.post("/search/image", response_model=SearchResponse, responses=ERRORS)
async def search_image(
    request: Request,
    core: Core,
    file: Annotated[UploadFile, File(description="an image file (PNG, JPEG, WebP, ...)")],
    k: Annotated[int, Form()] = 10,
    offset: Annotated[int, Form()] = 0,
    filter: Annotated[str | None, Form(description="JSON payload filter")] = None,
    target: Annotated[str, Form(description="images | captions")] = "images",
    collection: CollectionField = None,
    normalization: Annotated[
        str, Form(description="auto: bring a picture unlike the collection's images into its domain; off")
    ] = "auto",
) -> SearchResponse:
    """Items most similar to an uploaded image (the answer says which normalisation it got)."""
    data = await read_upload(request, file)
    options = form_options(k, offset, filter, target, collection, normalization)
    return await core.search_image(data, options)


@api.post("/search/sketch", response_model=SearchResponse, responses=ERRORS)
async def search_sketch(
    request: Request,
    core: Core,
    file: Annotated[UploadFile, File(description="a drawing, dark strokes on a light background")],
    k: Annotated[int, Form()] = 10,
    offset: Annotated[int, Form()] = 0,
    filter: Annotated[str | None, Form(description="JSON payload filter")] = None,
    target: Annotated[str, Form(description="images | captions")] = "images",
    collection: CollectionField = None,
) -> SearchResponse:
    """Items most similar to a sketch (normalised the way the collection's model expects)."""
    data = await read_upload(request, file)
    options = form_options(k, offset, filter, target, collection)
    return await core.search_image(data, options, sketch=True)


@api.post("/search/mixed", response_model=SearchResponse, responses=ERRORS)
async def search_mixed(body: MixedQueryBody, core: Core) -> SearchResponse:
    """Weighted text/image/sketch parts combined into one query (negative weights steer away)."""
    with reading():
        query = body.query()
    return await core.search_mixed(query)


@api.post("/classify", response_model=ClassifyResponse, responses=ERRORS)
async def classify(
    request: Request,
    core: Core,
    file: Annotated[UploadFile, File(description="an image or a drawing")],
    labels: Annotated[list[str], Form(description="candidate labels (repeat the field, or comma-separated)")],
    kind: Annotated[Literal["image", "sketch"], Form()] = "image",
    templates: Annotated[list[str] | None, Form(description='prompt templates with "{}"')] = None,
    temperature: Annotated[float | None, Form(description="softmax temperature; empty: the model's")] = None,
    collection: Annotated[str | None, Form(description="whose model classifies; empty: the default")] = None,
) -> ClassifyResponse:
    """Zero-shot classification: probabilities over the candidate labels."""
    data = await read_upload(request, file)
    with reading():
        if len(labels) == 1 and "," in labels[0]:
            labels = labels[0].split(",", MAX_LABELS_READ)
        check_count(len(labels), MAX_LABELS_READ, "labels")
        query = ClassifyQuery(
            kind=kind,
            labels=labels,
            templates=templates or [],
            temperature=temperature,
            collection=collection,
        )
    return await core.classify(data, query)


@api.get("/collections", response_model=CollectionsResponse, responses=ERRORS)
async def collections(core: Core) -> CollectionsResponse:
    """Every collection: its model, size, vectors, filterable fields with their values."""
    return await core.list_collections()


@api.get("/info")
async def info(core: Core) -> dict[str, Any]:
    """Which model and collection this gateway searches."""
    return await core.info()


# --- media ---


@media.get("/media/{key}", responses={404: {"model": ErrorOut}})
async def get_media(key: str, request: Request) -> Response:
    """An indexed item's image, by content key; cached forever (the key is its content hash)."""
    found: MediaFile | None = await run_in_threadpool(read_media, request.app.state.settings.media_dir, key)
    if found is None:
        raise NotFound(f"no media {key!r}")
    etag = f'"{found.key}"'
    headers = {"ETag": etag, "Cache-Control": "public, max-age=31536000, immutable"}
    if request.headers.get("if-none-match") in (etag, "*"):
        return Response(status_code=304, headers=headers)
    return Response(content=found.data, media_type=found.media_type, headers=headers)


# --- probes ---


@probes.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@probes.get("/readyz")
async def readyz(core: Core) -> JSONResponse:
    """Readiness: encoder serving, collection present and built with the encoder's model."""
    started = time.perf_counter()
    status = await core.readiness()
    body = {
        "ready": status.ready,
        "reasons": status.reasons,
        "model": status.model,
        "fingerprint": status.fingerprint,
        "collection": status.collection,
        "took_ms": round((time.perf_counter() - started) * 1000, 3),
    }
    return JSONResponse(body, status_code=200 if status.ready else 503)


@probes.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.core.metrics.render(), media_type=CONTENT_TYPE_LATEST)
