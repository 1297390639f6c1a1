"""The search core shared by the HTTP API and the gRPC service.

It validates queries, embeds them with the encoder, searches the store and
shapes hits. Failures are raised as errors.QueryError (the caller's fault) or
errors.Unavailable (a dependency is down); each front end maps those to its own
status codes. Nothing broken is cached: the encoder channel reconnects by
itself and the store handle reopens on the next call after a failure.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np

from clipsearch.batching import MicroBatcher
from clipsearch.encoder_client import EncoderClient, EncoderInputError, EncoderUnavailable
from clipsearch.store import (
    CAPTION_VECTOR,
    FILTERABLE_FIELDS,
    IMAGE_VECTOR,
    CollectionInfo,
    FilterError,
    SearchHit,
    validate_filter,
)
from clipsearch.v1 import encoder_pb2
from services.gateway.errors import PayloadTooLarge, QueryError, Unavailable
from services.gateway.metrics import GatewayMetrics
from services.gateway.query_cache import QueryCache
from services.gateway.settings import GatewaySettings
from services.gateway.store_handle import StoreHandle

T = TypeVar("T")

Target = Literal["images", "captions"]
PartKind = Literal["text", "image", "sketch"]
TARGET_VECTORS: dict[str, str] = {"images": IMAGE_VECTOR, "captions": CAPTION_VECTOR}
# Payload field holding the media key of an item's image (see clipsearch.media).
MEDIA_KEY_FIELD = "media_key"
# Zero-shot prompts used when neither the request nor the collection names any.
DEFAULT_TEMPLATES = ("a photo of a {}.", "a photo of the number {}.", "a drawing of a {}.")
MAX_PARTS = 16
MAX_QUERY_CHARS = 2_000
MAX_TEMPLATES = 32
# Cosine similarities divided by a smaller temperature overflow the softmax (NaN probabilities).
MIN_TEMPERATURE = 1e-4


@dataclass(frozen=True)
class QueryOptions:
    k: int = 10
    offset: int = 0
    filter: dict[str, Any] | None = None
    target: str = "images"


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]
    image_url: str | None


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    took_ms: float
    model: str
    collection: str


@dataclass(frozen=True)
class QueryPart:
    kind: PartKind
    content: str | bytes
    weight: float = 1.0


@dataclass(frozen=True)
class LabelScore:
    label: str
    probability: float


@dataclass(frozen=True)
class ClassifyResult:
    scores: list[LabelScore]
    took_ms: float
    model: str
    templates: list[str]
    temperature: float


@dataclass
class _Cached:
    """A value and when it was fetched; only successful answers are kept."""

    value: Any = None
    fetched_at: float = -math.inf

    def fresh(self, ttl_s: float) -> bool:
        return self.value is not None and time.monotonic() - self.fetched_at < ttl_s

    def set(self, value: Any) -> None:
        self.value, self.fetched_at = value, time.monotonic()

    def clear(self) -> None:
        self.value, self.fetched_at = None, -math.inf


@dataclass
class _SearchContext:
    model: encoder_pb2.ModelInfo
    collection: CollectionInfo
    using: str


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
        encoder: EncoderClient,
        store: StoreHandle,
        metrics: GatewayMetrics,
    ) -> None:
        self.settings = settings
        self.encoder = encoder
        self.store = store
        self.metrics = metrics
        self._model = _Cached()
        self._collection = _Cached()
        self.query_cache = QueryCache(settings.query_cache_size)
        # Concurrent text queries share encoder calls; a query the encoder rejects is retried alone,
        # so it fails by itself and not the queries it shared a call with.
        self._texts: MicroBatcher[str] = MicroBatcher(
            self._embed_texts_call,
            max_batch_size=settings.encoder_texts_per_call,
            max_wait_ms=0.0,
            enabled=settings.encoder_calls_in_flight > 0,
            max_in_flight=max(settings.encoder_calls_in_flight, 1),
            isolate=lambda exc: isinstance(exc, EncoderInputError),
            on_batch=metrics.encoder_call_texts.observe,
        )

    async def close(self) -> None:
        await self._texts.close()
        await self.encoder.close()
        await asyncio.to_thread(self.store.close)

    # --- queries ---

    async def search_text(self, query: str, options: QueryOptions) -> SearchResult:
        started = time.perf_counter()
        text = _check_text(query, "query")
        checked = self._check_options(options)
        context = await self._context(checked.target)
        vector = (await self._embed("text", [text]))[0]
        return await self._search(context, vector, checked, started)

    async def search_image(self, data: bytes, options: QueryOptions, *, sketch: bool = False) -> SearchResult:
        started = time.perf_counter()
        kind: PartKind = "sketch" if sketch else "image"
        self._check_upload(data, kind)
        checked = self._check_options(options)
        context = await self._context(checked.target)
        vector = (await self._embed(kind, [data]))[0]
        return await self._search(context, vector, checked, started)

    async def search_mixed(self, parts: Sequence[QueryPart], options: QueryOptions) -> SearchResult:
        """Weighted sum of the parts' unit vectors, normalised; negative weights steer away."""
        started = time.perf_counter()
        if not parts:
            raise QueryError("a mixed query needs at least one part")
        if len(parts) > MAX_PARTS:
            raise QueryError(f"a mixed query takes at most {MAX_PARTS} parts, got {len(parts)}")
        weights = [_check_weight(part.weight, position) for position, part in enumerate(parts)]
        for position, part in enumerate(parts):
            if isinstance(part.content, str):
                _check_text(part.content, f"part {position} text")
            else:
                self._check_upload(part.content, f"part {position} {part.kind}")
        checked = self._check_options(options)
        context = await self._context(checked.target)
        vectors = await self._embed_parts(parts)
        # Only the weights' ratios matter (the sum is normalised): scaling them to at most 1
        # keeps weights like 1e38 from overflowing float32 into a NaN query vector.
        scaled = np.asarray(weights, dtype=np.float64) / max(abs(weight) for weight in weights)
        combined = np.sum(scaled[:, None] * vectors.astype(np.float64), axis=0)
        norm = float(np.linalg.norm(combined))
        if norm < 1e-6:
            raise QueryError("the weighted parts cancel out; change the weights")
        return await self._search(context, (combined / norm).astype(np.float32), checked, started)

    async def classify(
        self,
        data: bytes,
        labels: Sequence[str],
        *,
        sketch: bool = False,
        templates: Sequence[str] = (),
        temperature: float | None = None,
    ) -> ClassifyResult:
        """Zero-shot probabilities over `labels`, prompts averaged per label (prompt ensemble)."""
        started = time.perf_counter()
        kind: PartKind = "sketch" if sketch else "image"
        self._check_upload(data, kind)
        clean_labels = self._check_labels(labels)
        clean_templates = _check_templates(templates) or await self._default_templates()
        if (
            temperature is not None
            and temperature != 0
            and not (math.isfinite(temperature) and temperature >= MIN_TEMPERATURE)
        ):
            raise QueryError(
                f"temperature must be a number of at least {MIN_TEMPERATURE} (or 0 for the model's own)"
            )
        model = await self._model_info()
        if not temperature:
            temperature = 1.0 / model.logit_scale if model.logit_scale > 0 else 0.01
        prompts = [template.format(label) for label in clean_labels for template in clean_templates]
        text_vectors = await self._embed_batched("text", prompts, int(model.max_batch_items) or 64)
        image_vector = (await self._embed(kind, [data]))[0]
        per_label = text_vectors.reshape(len(clean_labels), len(clean_templates), -1).mean(axis=1)
        per_label /= np.maximum(np.linalg.norm(per_label, axis=1, keepdims=True), 1e-12)
        # float64, so any finite temperature gives finite logits.
        logits = (per_label @ image_vector).astype(np.float64) / temperature
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        scores = sorted(
            (LabelScore(label, float(p)) for label, p in zip(clean_labels, probabilities, strict=True)),
            key=lambda score: score.probability,
            reverse=True,
        )
        return ClassifyResult(
            scores=scores,
            took_ms=_elapsed_ms(started),
            model=model.model_name,
            templates=list(clean_templates),
            temperature=float(temperature),
        )

    # --- status ---

    async def readiness(self) -> Readiness:
        """Ready when the encoder serves, the collection exists and matches the encoder's model."""
        status = Readiness(collection=self.settings.collection)
        model: encoder_pb2.ModelInfo | None = None
        if not await self.encoder.serving():
            status.reasons.append(f"encoder at {self.settings.encoder} is not serving")
        else:
            try:
                model = await self._model_info(refresh=True)
                status.model, status.fingerprint = model.model_name, model.fingerprint
            except Unavailable as exc:
                status.reasons.append(str(exc))
        try:
            info = await self._collection_info(refresh=True)
        except Unavailable as exc:
            status.reasons.append(str(exc))
            return status
        if model is not None and info.fingerprint != model.fingerprint:
            status.reasons.append(_mismatch_message(info, model))
        return status

    async def info(self) -> dict[str, Any]:
        """What the gateway searches, as far as can be told now (null where a dependency is down)."""
        model: dict[str, Any] | None = None
        collection: dict[str, Any] | None = None
        problems: list[str] = []
        try:
            found = await self._model_info()
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
        try:
            info = await self._collection_info()
            collection = {
                "alias": self.settings.collection,
                "version": info.name,
                "count": info.count,
                "fingerprint": info.fingerprint,
                "targets": [name for name, vector in TARGET_VECTORS.items() if vector in info.vector_names],
                "class_names": list(info.extra.get("class_names", [])),
            }
        except Unavailable as exc:
            problems.append(str(exc))
        return {
            "model": model,
            "collection": collection,
            "filterable_fields": {name: kind.__name__ for name, kind in FILTERABLE_FIELDS.items()},
            "max_k": self.settings.max_k,
            "max_upload_bytes": self.settings.max_upload_bytes,
            "default_templates": await self._default_templates(),
            "problems": problems,
        }

    # --- internals ---

    def _check_options(self, options: QueryOptions) -> QueryOptions:
        if not 1 <= options.k <= self.settings.max_k:
            raise QueryError(f"k must be between 1 and {self.settings.max_k}, got {options.k}")
        if not 0 <= options.offset <= self.settings.max_offset:
            raise QueryError(f"offset must be between 0 and {self.settings.max_offset}, got {options.offset}")
        if options.target not in TARGET_VECTORS:
            raise QueryError(f"target must be one of {', '.join(TARGET_VECTORS)}, got {options.target!r}")
        try:
            checked_filter = _normalise_filter(validate_filter(options.filter))
        except FilterError as exc:
            raise QueryError(str(exc)) from None
        return QueryOptions(k=options.k, offset=options.offset, filter=checked_filter, target=options.target)

    def _check_upload(self, data: bytes, what: str) -> None:
        if not data:
            raise QueryError(f"the {what} upload is empty")
        if len(data) > self.settings.max_upload_bytes:
            raise PayloadTooLarge(
                f"the {what} upload is {len(data)} bytes; the limit is {self.settings.max_upload_bytes}"
            )

    def _check_labels(self, labels: Sequence[str]) -> list[str]:
        clean = [label.strip() for label in labels if label.strip()]
        if not clean:
            raise QueryError("give at least one candidate label")
        if len(clean) > self.settings.max_labels:
            raise QueryError(f"at most {self.settings.max_labels} labels, got {len(clean)}")
        if len(set(clean)) != len(clean):
            raise QueryError("candidate labels must be distinct")
        for label in clean:
            _check_text(label, "label")
        return clean

    async def _default_templates(self) -> list[str]:
        try:
            info = await self._collection_info()
            recorded = info.extra.get("prompt_templates")
            if recorded:
                return [str(template) for template in recorded]
        except Unavailable:
            pass
        return list(DEFAULT_TEMPLATES)

    async def _context(self, target: str) -> _SearchContext:
        model, info = await asyncio.gather(self._model_info(), self._collection_info())
        if info.fingerprint != model.fingerprint:
            raise Unavailable(_mismatch_message(info, model))
        using = TARGET_VECTORS[target]
        if using not in info.vector_names:
            raise QueryError(
                f"collection {self.settings.collection!r} has no {target} vectors; "
                f"targets here: {', '.join(t for t, v in TARGET_VECTORS.items() if v in info.vector_names)}"
            )
        return _SearchContext(model=model, collection=info, using=using)

    async def _model_info(self, *, refresh: bool = False) -> encoder_pb2.ModelInfo:
        if not refresh and self._model.fresh(self.settings.info_ttl_s):
            return self._model.value
        try:
            model = await self.encoder.model_info()
        except EncoderUnavailable as exc:
            self._model.clear()
            self.metrics.dependency_errors.labels("encoder").inc()
            raise Unavailable(f"encoder unavailable: {exc}") from None
        except EncoderInputError as exc:  # not expected for an empty request
            raise Unavailable(f"encoder refused model info: {exc}") from None
        self._model.set(model)
        return model

    async def _collection_info(self, *, refresh: bool = False) -> CollectionInfo:
        if not refresh and self._collection.fresh(self.settings.info_ttl_s):
            return self._collection.value
        info = await self._store_call(lambda store: store.collection_info(self.settings.collection))
        if info is None:
            self._collection.clear()
            raise Unavailable(f"collection {self.settings.collection!r} not found: run the indexer first")
        self._collection.set(info)
        return info

    async def _store_call(self, call: Callable[[Any], T]) -> T:
        try:
            if self.store.in_process:
                return self.store.call(call)
            return await asyncio.to_thread(self.store.call, call)
        except Unavailable:
            self._collection.clear()
            self.metrics.dependency_errors.labels("store").inc()
            raise

    async def _embed(self, kind: PartKind, items: Sequence[Any]) -> np.ndarray:
        """Vectors for `items`; texts the current model has embedded before come from the cache."""
        model = self._model.value
        if kind != "text" or model is None or self.query_cache.max_entries <= 0:
            return await self._call_encoder(kind, items)
        fingerprint = model.fingerprint
        vectors = [self.query_cache.get(fingerprint, text) for text in items]
        missing = list(
            dict.fromkeys(text for text, vector in zip(items, vectors, strict=True) if vector is None)
        )
        self.metrics.query_cache.labels("hit").inc(len(items) - len(missing))
        self.metrics.query_cache.labels("miss").inc(len(missing))
        if missing:
            fresh = dict(zip(missing, await self._call_encoder(kind, missing), strict=True))
            for text, vector in fresh.items():
                self.query_cache.put(fingerprint, text, vector)
            vectors = [
                fresh[text] if vector is None else vector for text, vector in zip(items, vectors, strict=True)
            ]
        return np.stack([vector for vector in vectors if vector is not None])

    async def _call_encoder(self, kind: PartKind, items: Sequence[Any]) -> np.ndarray:
        started = time.perf_counter()
        try:
            if kind == "text":
                self._texts.start()  # idempotent; needs the running loop, which __init__ may not have
                vectors = await self._texts.submit(list(items))
            elif kind == "image":
                vectors = await self.encoder.embed_images(items)
            else:
                vectors = await self.encoder.embed_sketches(items)
        except EncoderInputError as exc:
            raise QueryError(f"the encoder cannot use this {kind}: {exc}") from None
        except EncoderUnavailable as exc:
            self._model.clear()
            self.metrics.dependency_errors.labels("encoder").inc()
            raise Unavailable(f"encoder unavailable: {exc}") from None
        finally:
            self.metrics.stage_seconds.labels("embed").observe(time.perf_counter() - started)
        if len(vectors) != len(items):
            raise Unavailable(f"encoder returned {len(vectors)} vectors for {len(items)} inputs")
        return vectors

    async def _embed_texts_call(self, texts: list[str]) -> np.ndarray:
        """One EmbedText call for the texts of concurrent queries (each distinct text once)."""
        distinct = list(dict.fromkeys(texts))
        vectors = await self.encoder.embed_texts(distinct)
        if len(vectors) != len(distinct):
            raise EncoderUnavailable(f"encoder returned {len(vectors)} vectors for {len(distinct)} texts")
        position = {text: row for row, text in enumerate(distinct)}
        return vectors[[position[text] for text in texts]]

    async def _embed_batched(self, kind: PartKind, items: Sequence[Any], batch: int) -> np.ndarray:
        chunks = [items[start : start + batch] for start in range(0, len(items), batch)]
        return np.concatenate([await self._embed(kind, chunk) for chunk in chunks])

    async def _embed_parts(self, parts: Sequence[QueryPart]) -> np.ndarray:
        """One encoder call per kind of part, vectors back in the parts' order."""
        vectors: list[np.ndarray | None] = [None] * len(parts)
        kinds: tuple[PartKind, ...] = ("text", "image", "sketch")
        for kind in kinds:
            positions = [i for i, part in enumerate(parts) if part.kind == kind]
            if positions:
                found = await self._embed(kind, [parts[i].content for i in positions])
                for position, vector in zip(positions, found, strict=True):
                    vectors[position] = vector
        return np.stack([vector for vector in vectors if vector is not None])

    async def _search(
        self, context: _SearchContext, vector: np.ndarray, options: QueryOptions, started: float
    ) -> SearchResult:
        if vector.shape[-1] != context.collection.dim:
            raise Unavailable(
                f"encoder vectors have {vector.shape[-1]} dimensions, the collection {context.collection.dim}"
            )
        stage_started = time.perf_counter()
        found: list[SearchHit] = await self._store_call(
            lambda store: store.search(
                self.settings.collection,
                vector,
                using=context.using,
                k=options.k,
                offset=options.offset,
                filter=options.filter,
            )
        )
        self.metrics.stage_seconds.labels("search").observe(time.perf_counter() - stage_started)
        return SearchResult(
            hits=[Hit(hit.id, float(hit.score), hit.payload, self.image_url(hit.payload)) for hit in found],
            took_ms=_elapsed_ms(started),
            model=context.model.model_name,
            collection=self.settings.collection,
        )

    def image_url(self, payload: dict[str, Any]) -> str | None:
        key = payload.get(MEDIA_KEY_FIELD)
        if not isinstance(key, str) or not key:
            return None
        base = (self.settings.public_url or "").rstrip("/")
        return f"{base}/api/v1/media/{key}"


def _check_text(text: str, what: str) -> str:
    stripped = text.strip()
    if not stripped:
        raise QueryError(f"the {what} is empty")
    try:
        stripped.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates ("\ud800" in JSON) cannot be sent on to the encoder
        raise QueryError(f"the {what} is not valid Unicode (it has unpaired surrogates)") from None
    if len(stripped) > MAX_QUERY_CHARS:
        raise QueryError(f"the {what} is {len(stripped)} characters; the limit is {MAX_QUERY_CHARS}")
    return stripped


def _check_weight(weight: float, position: int) -> float:
    if not math.isfinite(weight):
        raise QueryError(f"part {position} has a weight that is not a finite number")
    return weight if weight != 0 else 1.0


def _check_templates(templates: Sequence[str]) -> list[str]:
    clean = [template.strip() for template in templates if template.strip()]
    if len(clean) > MAX_TEMPLATES:
        raise QueryError(f"at most {MAX_TEMPLATES} templates, got {len(clean)}")
    for template in clean:
        _check_text(template, "template")
        rest = template.replace("{}", "")
        if template.count("{}") != 1 or "{" in rest or "}" in rest:
            raise QueryError(f'template {template!r} must contain "{{}}" exactly once (for the label)')
    return clean


def _normalise_filter(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """Whole floats to int for int fields: JSON and protobuf Struct numbers may arrive as 7.0."""
    if spec is None:
        return None

    def fix(key: str, value: Any) -> Any:
        if FILTERABLE_FIELDS.get(key) is int and isinstance(value, float):
            return int(value)
        return value

    return {
        key: [fix(key, item) for item in value] if isinstance(value, list) else fix(key, value)
        for key, value in spec.items()
    }


def _mismatch_message(info: CollectionInfo, model: encoder_pb2.ModelInfo) -> str:
    return (
        f"collection {info.alias or info.name!r} was built with model {info.fingerprint[:12]}, "
        f"the encoder runs {model.fingerprint[:12]}: re-run the indexer"
    )


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
