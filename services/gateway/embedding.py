"""Query embedding through the encoder: the models it serves, the query cache, shared text calls.

Every call names the model by its fingerprint, so a query is always embedded by the model that
built the collection it searches, whatever else the encoder serves. Encoder failures become
gateway errors here, once: a refused input is the caller's `QueryError`; an unreachable encoder,
or one that does not serve the model, is `Unavailable`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from clipsearch.batching import MicroBatcher
from clipsearch.encoder_client import (
    Embeddings,
    EncoderClient,
    EncoderInputError,
    EncoderModelNotFound,
    EncoderOverloaded,
    EncoderUnavailable,
    ImageNormalization,
)
from clipsearch.v1 import encoder_pb2
from services.gateway.errors import Overloaded, QueryError, Unavailable
from services.gateway.facts import Facts
from services.gateway.metrics import GatewayMetrics
from services.gateway.query_cache import QueryCache
from services.gateway.schemas import Normalization, PartKind, QueryPart
from services.gateway.settings import GatewaySettings

NORMALIZATIONS = {"auto": ImageNormalization.AUTO, "off": ImageNormalization.OFF}
Models = dict[str, encoder_pb2.ModelInfo]  # by fingerprint


class QueryEmbedder:
    def __init__(self, encoder: EncoderClient, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        self.encoder = encoder
        self.settings = settings
        self.metrics = metrics
        self.cache = QueryCache(settings.query_cache_size)
        self._models: Facts[Models] = Facts(settings.info_ttl_s)
        self._texts: dict[str, MicroBatcher[str]] = {}  # per model fingerprint

    async def close(self) -> None:
        for batcher in self._texts.values():
            await batcher.close()
        await self.encoder.close()

    async def serving(self) -> bool:
        return await self.encoder.serving()

    async def models(self, *, refresh: bool = False) -> Models:
        """Every model the encoder serves, by fingerprint (reused for `info_ttl_s`)."""
        if not refresh and (known := self._models.fresh()) is not None:
            return known
        try:
            found = await self.encoder.list_models()
        except EncoderUnavailable as exc:
            self._models.clear()
            self.metrics.dependency_errors.labels("encoder").inc()
            raise Unavailable(f"encoder unavailable: {exc}") from None
        except EncoderInputError as exc:  # not expected for an empty request
            raise Unavailable(f"encoder refused to list its models: {exc}") from None
        return self._models.set({model.fingerprint: model for model in found})

    async def model(self, fingerprint: str, built_by: str | None = None) -> encoder_pb2.ModelInfo:
        """The served model with this fingerprint; a model loaded since the last look is found too."""
        models = await self.models()
        if fingerprint not in models:
            models = await self.models(refresh=True)
        found = models.get(fingerprint)
        if found is None:
            served = ", ".join(f"{m.name} ({m.fingerprint[:12]})" for m in models.values()) or "none"
            raise Unavailable(
                f"model {built_by or 'unknown'} ({fingerprint[:12]}) is not served by the encoder at "
                f"{self.settings.encoder} (it serves: {served}): serve that model or re-run the indexer"
            )
        return found

    async def embed(
        self,
        model: encoder_pb2.ModelInfo,
        kind: PartKind,
        items: Sequence[Any],
        *,
        normalization: Normalization = "auto",
    ) -> Embeddings:
        """Unit vectors of `items` by `model`; texts it has embedded before come from the cache."""
        if kind != "text" or self.cache.max_entries <= 0:
            return await self._call_encoder(model, kind, items, normalization)
        vectors = [self.cache.get(model.fingerprint, text) for text in items]
        missing = list(
            dict.fromkeys(text for text, vector in zip(items, vectors, strict=True) if vector is None)
        )
        self.metrics.query_cache.labels("hit").inc(len(items) - len(missing))
        self.metrics.query_cache.labels("miss").inc(len(missing))
        if missing:
            embedded = await self._call_encoder(model, kind, missing, normalization)
            fresh = dict(zip(missing, embedded.vectors, strict=True))
            for text, vector in fresh.items():
                self.cache.put(model.fingerprint, text, vector)
            vectors = [
                fresh[text] if vector is None else vector for text, vector in zip(items, vectors, strict=True)
            ]
        rows = np.stack([vector for vector in vectors if vector is not None])
        return Embeddings(vectors=rows, fingerprint=model.fingerprint, normalizations=[])

    async def embed_texts_batched(self, model: encoder_pb2.ModelInfo, texts: Sequence[str]) -> np.ndarray:
        """Many texts (a classifier's prompts) in calls of at most the encoder's request size."""
        batch = int(model.max_batch_items) or 64
        chunks = [texts[start : start + batch] for start in range(0, len(texts), batch)]
        return np.concatenate([(await self.embed(model, "text", chunk)).vectors for chunk in chunks])

    async def embed_parts(self, model: encoder_pb2.ModelInfo, parts: Sequence[QueryPart]) -> np.ndarray:
        """One encoder call per kind of part, vectors back in the parts' order."""
        vectors: list[np.ndarray | None] = [None] * len(parts)
        kinds: tuple[PartKind, ...] = ("text", "image", "sketch")
        for kind in kinds:
            positions = [i for i, part in enumerate(parts) if part.kind == kind]
            if positions:
                found = await self.embed(model, kind, [parts[i].content for i in positions])
                for position, vector in zip(positions, found.vectors, strict=True):
                    vectors[position] = vector
        return np.stack([vector for vector in vectors if vector is not None])

    async def _call_encoder(
        self, model: encoder_pb2.ModelInfo, kind: PartKind, items: Sequence[Any], normalization: Normalization
    ) -> Embeddings:
        started = time.perf_counter()
        try:
            if kind == "text":
                vectors = await self._text_batcher(model.fingerprint).submit(list(items))
                embedded = Embeddings(vectors=vectors, fingerprint=model.fingerprint, normalizations=[])
            else:
                embedded = await self.encoder.embed(
                    kind, items, model=model.fingerprint, normalization=NORMALIZATIONS[normalization]
                )
        except EncoderInputError as exc:
            raise QueryError(f"the encoder cannot use this {kind}: {exc}") from None
        except EncoderOverloaded as exc:  # the encoder refused at once: shed, as the gateway would
            raise Overloaded(f"the encoder is over capacity: {exc}", exc.retry_after_s) from None
        except EncoderModelNotFound as exc:
            self._models.clear()
            raise Unavailable(f"the encoder no longer serves model {model.name}: {exc}") from None
        except EncoderUnavailable as exc:
            self._models.clear()
            self.metrics.dependency_errors.labels("encoder").inc()
            raise Unavailable(f"encoder unavailable: {exc}") from None
        finally:
            self.metrics.stage_seconds.labels("embed").observe(time.perf_counter() - started)
        if len(embedded.vectors) != len(items):
            raise Unavailable(f"encoder returned {len(embedded.vectors)} vectors for {len(items)} inputs")
        return embedded

    def _text_batcher(self, fingerprint: str) -> MicroBatcher[str]:
        """Concurrent text queries for one model share encoder calls; a query the encoder rejects
        is retried alone, so it fails by itself and not the queries it shared a call with."""
        batcher = self._texts.get(fingerprint)
        if batcher is None:

            async def call(texts: list[str]) -> np.ndarray:
                return await self._embed_texts_call(fingerprint, texts)

            batcher = self._texts[fingerprint] = MicroBatcher(
                call,
                max_batch_size=self.settings.encoder_texts_per_call,
                max_wait_ms=0.0,
                enabled=self.settings.encoder_calls_in_flight > 0,
                max_in_flight=max(self.settings.encoder_calls_in_flight, 1),
                isolate=lambda exc: isinstance(exc, EncoderInputError),
                on_batch=self.metrics.encoder_call_texts.observe,
                # Bounded by the gateway's admission already; this keeps the batcher bounded on its own.
                max_queued_items=max(self.settings.max_in_flight, self.settings.encoder_texts_per_call),
                retry_after_s=self.settings.retry_after_s,
            )
        batcher.start()  # idempotent; needs the running loop
        return batcher

    async def _embed_texts_call(self, fingerprint: str, texts: list[str]) -> np.ndarray:
        """One EmbedText call for the texts of concurrent queries (each distinct text once)."""
        distinct = list(dict.fromkeys(texts))
        vectors = await self.encoder.embed_texts(distinct, model=fingerprint)
        if len(vectors) != len(distinct):
            raise EncoderUnavailable(f"encoder returned {len(vectors)} vectors for {len(distinct)} texts")
        position = {text: row for row, text in enumerate(distinct)}
        return vectors[[position[text] for text in texts]]
