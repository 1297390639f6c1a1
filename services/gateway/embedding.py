"""Query embedding through the encoder: the model's facts, the query cache, shared text calls.

Encoder failures become gateway errors here, once: a refused input is the caller's
`QueryError`, an unreachable or failing encoder is `Unavailable`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from clipsearch.batching import MicroBatcher
from clipsearch.encoder_client import EncoderClient, EncoderInputError, EncoderOverloaded, EncoderUnavailable
from clipsearch.v1 import encoder_pb2
from services.gateway.errors import Overloaded, QueryError, Unavailable
from services.gateway.facts import Facts
from services.gateway.metrics import GatewayMetrics
from services.gateway.query_cache import QueryCache
from services.gateway.schemas import PartKind, QueryPart
from services.gateway.settings import GatewaySettings


class QueryEmbedder:
    def __init__(self, encoder: EncoderClient, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        self.encoder = encoder
        self.settings = settings
        self.metrics = metrics
        self.cache = QueryCache(settings.query_cache_size)
        self._model: Facts[encoder_pb2.ModelInfo] = Facts(settings.info_ttl_s)
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
            # Bounded by the gateway's admission already; this keeps the batcher bounded on its own.
            max_queued_items=max(settings.max_in_flight, settings.encoder_texts_per_call),
            retry_after_s=settings.retry_after_s,
        )

    async def close(self) -> None:
        await self._texts.close()
        await self.encoder.close()

    async def serving(self) -> bool:
        return await self.encoder.serving()

    async def model(self, *, refresh: bool = False) -> encoder_pb2.ModelInfo:
        """What the encoder serves (reused for `info_ttl_s`)."""
        if not refresh and (known := self._model.fresh()) is not None:
            return known
        try:
            model = await self.encoder.model_info()
        except EncoderUnavailable as exc:
            self._model.clear()
            self.metrics.dependency_errors.labels("encoder").inc()
            raise Unavailable(f"encoder unavailable: {exc}") from None
        except EncoderInputError as exc:  # not expected for an empty request
            raise Unavailable(f"encoder refused model info: {exc}") from None
        return self._model.set(model)

    async def embed(self, model: encoder_pb2.ModelInfo, kind: PartKind, items: Sequence[Any]) -> np.ndarray:
        """Unit vectors for `items`; texts this model has embedded before come from the cache."""
        if kind != "text" or self.cache.max_entries <= 0:
            return await self._call_encoder(kind, items)
        vectors = [self.cache.get(model.fingerprint, text) for text in items]
        missing = list(
            dict.fromkeys(text for text, vector in zip(items, vectors, strict=True) if vector is None)
        )
        self.metrics.query_cache.labels("hit").inc(len(items) - len(missing))
        self.metrics.query_cache.labels("miss").inc(len(missing))
        if missing:
            fresh = dict(zip(missing, await self._call_encoder(kind, missing), strict=True))
            for text, vector in fresh.items():
                self.cache.put(model.fingerprint, text, vector)
            vectors = [
                fresh[text] if vector is None else vector for text, vector in zip(items, vectors, strict=True)
            ]
        return np.stack([vector for vector in vectors if vector is not None])

    async def embed_texts_batched(self, model: encoder_pb2.ModelInfo, texts: Sequence[str]) -> np.ndarray:
        """Many texts (a classifier's prompts) in calls of at most the encoder's request size."""
        batch = int(model.max_batch_items) or 64
        chunks = [texts[start : start + batch] for start in range(0, len(texts), batch)]
        return np.concatenate([await self.embed(model, "text", chunk) for chunk in chunks])

    async def embed_parts(self, model: encoder_pb2.ModelInfo, parts: Sequence[QueryPart]) -> np.ndarray:
        """One encoder call per kind of part, vectors back in the parts' order."""
        vectors: list[np.ndarray | None] = [None] * len(parts)
        kinds: tuple[PartKind, ...] = ("text", "image", "sketch")
        for kind in kinds:
            positions = [i for i, part in enumerate(parts) if part.kind == kind]
            if positions:
                found = await self.embed(model, kind, [parts[i].content for i in positions])
                for position, vector in zip(positions, found, strict=True):
                    vectors[position] = vector
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
        except EncoderOverloaded as exc:  # the encoder refused at once: shed, as the gateway would
            raise Overloaded(f"the encoder is over capacity: {exc}", exc.retry_after_s) from None
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
