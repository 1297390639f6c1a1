"""The search core shared by the HTTP API and the gRPC service: thin search and classify.

Requests arrive as checked models (services.gateway.schemas); the query embedder
(embedding.py) turns them into vectors and the collection (collections.py) answers
them. Failures are gateway errors (errors.py), mapped to statuses by one table.
Nothing broken is cached: the encoder channel reconnects by itself and the store
handle reopens on the next call after a failure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clipsearch import overload
from clipsearch.overload import Admission
from clipsearch.store import FILTERABLE_FIELDS, CollectionInfo, SearchHit
from clipsearch.v1 import encoder_pb2
from services.gateway.collections import Collection, Collections
from services.gateway.embedding import QueryEmbedder
from services.gateway.errors import DeadlineExceeded, Overloaded, QueryError, Unavailable, VersionGone
from services.gateway.metrics import GatewayMetrics
from services.gateway.schemas import (
    ClassifyQuery,
    ClassifyResponse,
    CollectionOut,
    CollectionsResponse,
    Hit,
    ImageOptions,
    LabelScore,
    MixedQuery,
    PartKind,
    QueryLimits,
    SearchOptions,
    SearchResponse,
    TextQuery,
)
from services.gateway.settings import GatewaySettings

# Payload field holding the media key of an item's image (see clipsearch.media).
MEDIA_KEY_FIELD = "media_key"
# Zero-shot prompts used when neither the request nor the collection names any.
DEFAULT_TEMPLATES = ("a photo of a {}.", "a photo of the number {}.", "a drawing of a {}.")


@dataclass(frozen=True)
class Target:
    """Where a query goes: the collection, its live version and the model that built it."""

    collection: Collection
    info: CollectionInfo
    model: encoder_pb2.ModelInfo


@dataclass
class Readiness:
    reasons: list[str] = field(default_factory=list)
    model: str | None = None
    fingerprint: str | None = None
    collection: str | None = None

    @property
    def ready(self) -> bool:
        return not self.reasons


class SearchCore:
    def __init__(
        self,
        settings: GatewaySettings,
        embedder: QueryEmbedder,
        collections: Collections,
        metrics: GatewayMetrics,
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.collections = collections
        self.metrics = metrics
        self.limits = QueryLimits(
            max_k=settings.max_k,
            max_offset=settings.max_offset,
            max_labels=settings.max_labels,
            max_upload_bytes=settings.max_upload_bytes,
        )
        # Queries past capacity are refused at once rather than queued (clipsearch.overload).
        self.admission = Admission(
            max_in_flight=settings.max_in_flight,
            max_queued=settings.max_queued,
            max_wait_s=settings.max_queue_wait_s,
            retry_after_s=settings.retry_after_s,
            what="gateway queries",
        )

    async def close(self) -> None:
        await self.embedder.close()
        await asyncio.to_thread(self.collections.close)

    # --- queries ---

    async def search_text(self, query: TextQuery) -> SearchResponse:
        async def vector(target: Target) -> tuple[np.ndarray, str | None]:
            return (await self.embedder.embed(target.model, "text", [query.query])).vectors[0], None

        return await self._search(query, vector)

    async def search_image(
        self, data: bytes, options: ImageOptions, *, sketch: bool = False
    ) -> SearchResponse:
        kind: PartKind = "sketch" if sketch else "image"
        self.limits.check_upload(data, kind)

        async def vector(target: Target) -> tuple[np.ndarray, str | None]:
            embedded = await self.embedder.embed(
                target.model, kind, [data], normalization=options.normalization
            )
            return embedded.vectors[0], (embedded.normalizations[0] if embedded.normalizations else None)

        return await self._search(options, vector)

    async def search_mixed(self, query: MixedQuery) -> SearchResponse:
        """Weighted sum of the parts' unit vectors, normalised; negative weights steer away."""
        for position, part in enumerate(query.parts):
            if isinstance(part.content, bytes):
                self.limits.check_upload(part.content, f"part {position} {part.kind}")

        async def vector(target: Target) -> tuple[np.ndarray, str | None]:
            vectors = await self.embedder.embed_parts(target.model, query.parts)
            weights = np.asarray([part.weight for part in query.parts], dtype=np.float64)
            # Only the weights' ratios matter (the sum is normalised): scaling them to at most 1
            # keeps weights like 1e38 from overflowing float32 into a NaN query vector.
            scaled = weights / np.abs(weights).max()
            combined = np.sum(scaled[:, None] * vectors.astype(np.float64), axis=0)
            norm = float(np.linalg.norm(combined))
            if norm < 1e-6:
                raise QueryError("the weighted parts cancel out; change the weights")
            return (combined / norm).astype(np.float32), None

        return await self._search(query, vector)

    async def classify(self, data: bytes, query: ClassifyQuery) -> ClassifyResponse:
        """Zero-shot probabilities over the labels, prompts averaged per label (prompt ensemble)."""
        started = time.perf_counter()
        self.limits.check_upload(data, query.kind)
        self.limits.check_labels(query.labels)
        async with self._admitted():
            collection = await self.collections.get(query.collection)
            info = await collection.info()
            model = await self.embedder.model(info.fingerprint, _built_by(info))
            templates = query.templates or _templates(info)
            temperature = query.temperature or (1.0 / model.logit_scale if model.logit_scale > 0 else 0.01)
            prompts = [template.format(label) for label in query.labels for template in templates]
            text_vectors = await self.embedder.embed_texts_batched(model, prompts)
            image_vector = (await self.embedder.embed(model, query.kind, [data])).vectors[0]
        per_label = text_vectors.reshape(len(query.labels), len(templates), -1).mean(axis=1)
        per_label /= np.maximum(np.linalg.norm(per_label, axis=1, keepdims=True), 1e-12)
        # float64, so any finite temperature gives finite logits.
        logits = (per_label @ image_vector).astype(np.float64) / temperature
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        scores = sorted(
            (
                LabelScore(label=label, probability=float(p))
                for label, p in zip(query.labels, probabilities, strict=True)
            ),
            key=lambda score: score.probability,
            reverse=True,
        )
        return ClassifyResponse(
            scores=scores,
            took_ms=_elapsed_ms(started),
            model=model.model_name,
            templates=list(templates),
            temperature=float(temperature),
        )

    # --- status ---

    async def readiness(self) -> Readiness:
        """Ready when the encoder serves, and the default collection exists with its model served."""
        status = Readiness(collection=self.collections.default)
        if not await self.embedder.serving():
            status.reasons.append(f"encoder at {self.settings.encoder} is not serving")
            return status
        try:
            collection = await self.collections.get()
            info = await collection.info(refresh=True)
            # The live version opens here (another process may hold it: the embedded store).
            await collection.call(lambda store: store.count(info.name))
            model = await self.embedder.model(info.fingerprint, _built_by(info))
            status.model, status.fingerprint = model.model_name, model.fingerprint
        except Unavailable as exc:
            status.reasons.append(str(exc))
        return status

    async def list_collections(self) -> CollectionsResponse:
        """Every published collection with its model, size, vectors and filterable values."""
        names = await self.collections.names(refresh=True)
        return CollectionsResponse(
            collections=[await self._describe(name) for name in names],
            default_collection=self.collections.default,
        )

    async def info(self) -> dict[str, Any]:
        """What the gateway searches by default, as far as can be told now (null where a
        dependency is down)."""
        model: dict[str, Any] | None = None
        described: dict[str, Any] | None = None
        problems: list[str] = []
        info: CollectionInfo | None = None
        try:
            collection = await self.collections.get()
            info = await collection.info()
            described = {
                "alias": collection.name,
                "version": info.name,
                "count": info.count,
                "fingerprint": info.fingerprint,
                "targets": collection.targets(info),
                "class_names": list(info.extra.get("class_names", [])),
            }
            found = await self.embedder.model(info.fingerprint, _built_by(info))
            model = {
                "name": found.model_name,
                "fingerprint": found.fingerprint,
                "embedding_dim": found.embedding_dim,
                "image_size": found.image_size,
                "architecture": found.architecture,
                "sketch_normalization": found.sketch_normalization,
            }
        except Unavailable as exc:
            problems.append(str(exc))
        return {
            "model": model,
            "collection": described,
            "filterable_fields": {name: kind.__name__ for name, kind in FILTERABLE_FIELDS.items()},
            "max_k": self.settings.max_k,
            "max_upload_bytes": self.settings.max_upload_bytes,
            "default_templates": _templates(info),
            "problems": problems,
        }

    # --- internals ---

    @asynccontextmanager
    async def _admitted(self) -> AsyncIterator[None]:
        """A slot for one query; refusals for capacity or a passed deadline as gateway errors."""
        try:
            async with self.admission.slot():
                yield
        except overload.Overloaded as exc:
            self.metrics.shed.inc()
            raise Overloaded(str(exc), exc.retry_after_s) from None
        except overload.DeadlineExpired as exc:
            raise DeadlineExceeded(str(exc)) from None

    async def _target(self, options: SearchOptions) -> Target:
        """The collection to search with its live version and the model that built it."""
        self.limits.check_options(options)
        collection = await self.collections.get(options.collection)
        info = await collection.info()
        model = await self.embedder.model(info.fingerprint, _built_by(info))
        collection.vector_for(info, options.target)
        return Target(collection, info, model)

    async def _search(
        self, options: SearchOptions, embed: Callable[[Target], Awaitable[tuple[np.ndarray, str | None]]]
    ) -> SearchResponse:
        """Embed with the model of the version searched; when that version is dropped in between (a
        new model's version replaced it), start again once on the new one."""
        started = time.perf_counter()
        async with self._admitted():
            for attempt in (1, 2):
                target = await self._target(options)
                vector, normalization = await embed(target)
                try:
                    found = await target.collection.search(target.info, vector, options)
                except VersionGone:
                    target.collection.forget()
                    if attempt == 2:
                        raise
                    continue
                return SearchResponse(
                    hits=[self._hit(hit) for hit in found],
                    took_ms=_elapsed_ms(started),
                    model=target.model.model_name,
                    collection=target.collection.name,
                    normalization=normalization,
                )
        raise AssertionError("unreachable")

    async def _describe(self, name: str) -> CollectionOut:
        collection = await self.collections.get(name)
        try:
            info = await collection.info()
        except Unavailable as exc:
            return CollectionOut(
                name=name, model=None, fingerprint="", version="", points=0, vectors=[], targets=[],
                filter_fields={}, sketch_normalization=None, ready=False, problem=str(exc),
            )  # fmt: skip
        problem: str | None = None
        model: encoder_pb2.ModelInfo | None = None
        try:
            model = await self.embedder.model(info.fingerprint, _built_by(info))
        except Unavailable as exc:
            problem = str(exc)
        return CollectionOut(
            name=name,
            model=model.name if model else _built_by(info),
            fingerprint=info.fingerprint,
            version=info.name,
            points=info.count,
            vectors=info.vector_names,
            targets=collection.targets(info),
            filter_fields=await collection.filter_fields(info),
            sketch_normalization=model.sketch_normalization if model else None,
            attribution=info.extra.get("attribution"),
            ready=problem is None,
            problem=problem,
        )

    def _hit(self, hit: SearchHit) -> Hit:
        return Hit(
            id=hit.id, score=float(hit.score), payload=hit.payload, image_url=self.image_url(hit.payload)
        )

    def image_url(self, payload: dict[str, Any]) -> str | None:
        key = payload.get(MEDIA_KEY_FIELD)
        if not isinstance(key, str) or not key:
            return None
        base = (self.settings.public_url or "").rstrip("/")
        return f"{base}/api/v1/media/{key}"


def _built_by(info: CollectionInfo) -> str | None:
    """The name of the model that built a version, as the indexer recorded it."""
    name = info.extra.get("model_name")
    return str(name) if name else None


def _templates(info: CollectionInfo | None) -> list[str]:
    """The prompt templates the collection records for zero-shot use, else the defaults."""
    recorded = info.extra.get("prompt_templates") if info else None
    return [str(template) for template in recorded] if recorded else list(DEFAULT_TEMPLATES)


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)
