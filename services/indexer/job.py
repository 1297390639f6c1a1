"""One indexing run: list the source, embed what is missing, write points and media, publish.

Full mode builds a new version behind the alias and swaps it in when complete
(resuming an unfinished version of the same model and source if one exists).
Incremental mode adds new items to the live version and removes items that
left the source.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clipsearch.encoder_client import (
    EncoderClient,
    EncoderError,
    EncoderInputError,
    EncoderModelNotFound,
    EncoderUnavailable,
)
from clipsearch.media import MediaStore, media_key
from clipsearch.progress import progress_bar
from clipsearch.store import (
    CAPTION_VECTOR,
    IMAGE_VECTOR,
    ClusterLayout,
    FingerprintMismatch,
    Point,
    StoreError,
    VectorStore,
    open_store,
)
from clipsearch.v1 import encoder_pb2

from .pipeline import StreamBatch, StreamEmbedder, batch_ranges
from .settings import IndexerSettings
from .sources import (
    BadItem,
    ItemError,
    PreparedItem,
    Source,
    SourceError,
    SourceItem,
    in_shard,
    open_source,
    prepare,
)

log = logging.getLogger(__name__)


class IndexerError(RuntimeError):
    """The run cannot go on; the message is for the user (no traceback)."""


class Interrupted(RuntimeError):
    """Raised by the test hook `stop_after_batches`: the run stops as if killed."""


@dataclass
class IndexReport:
    alias: str
    collection: str
    mode: str
    source: str
    fingerprint: str
    total: int = 0  # items in the source
    indexed: int = 0  # points written by this run
    already_present: int = 0  # items skipped because an earlier run wrote them
    deleted: int = 0
    errors: list[BadItem] = field(default_factory=list)
    shard: str | None = None  # "i/N" when this run filled one shard of a shared version
    count: int = 0  # points in the collection at the end
    resumed: bool = False
    published: bool = False
    seconds: float = 0.0
    reconnects: int = 0

    @property
    def images_per_s(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    def summary(self, *, show_errors: int = 5) -> str:
        lines = [
            f"{self.mode} index of {self.source} into {self.alias!r} ({self.collection}"
            f"{', resumed' if self.resumed else ''}{', published' if self.published else ''}): "
            f"{self.indexed} indexed, {self.already_present} already present, {self.deleted} deleted, "
            f"{len(self.errors)} errors in {self.seconds:.1f} s ({self.images_per_s:.0f} images/s); "
            f"collection holds {self.count} points"
        ]
        if self.shard:
            lines.append(
                f"  shard {self.shard} done; not published: when every shard is done, run once more "
                "without shards to verify the whole version and publish it"
            )
        for bad in self.errors[:show_errors]:
            lines.append(f"  skipped {bad.relative_path}: {bad.message}")
        if len(self.errors) > show_errors:
            lines.append(f"  ... and {len(self.errors) - show_errors} more")
        return "\n".join(lines)


@dataclass
class _Batch:
    items: list[PreparedItem]
    bad: list[BadItem]
    captions: asyncio.Task[np.ndarray] | None


class IndexJob:
    def __init__(
        self,
        settings: IndexerSettings,
        store: VectorStore,
        client: EncoderClient,
        info: encoder_pb2.ModelInfo,
        *,
        stop_after_batches: int | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.info = info
        self.media = MediaStore(settings.media_dir)
        self.stop_after_batches = stop_after_batches
        limit = info.max_batch_items or settings.batch_size
        self.batch_size = min(settings.batch_size, limit)

    async def run(self, source: Source) -> IndexReport:
        started = time.perf_counter()
        vector_names = [IMAGE_VECTOR, CAPTION_VECTOR] if source.has_captions else [IMAGE_VECTOR]
        target, report = await self._choose_target(source, vector_names)
        sharded = self.settings.shard_count > 1
        items = [item for item in source.items if self._mine(item.id)]
        if sharded:
            report.shard = f"{self.settings.shard_index}/{self.settings.shard_count}"
        report.total = len(items)
        report.errors.extend(source.bad)
        if source.bad and self.settings.fail_on_bad_items:
            raise IndexerError(
                f"{len(source.bad)} unreadable entries in the source:\n" + _listing(source.bad)
            )

        # Store calls block (disk, network, index builds): each runs in a worker thread so the event
        # loop keeps serving the encoder stream and the caption tasks.
        stored = await asyncio.to_thread(self.store.ids, target)
        present = {point_id for point_id in stored if self._mine(point_id)}
        wanted = {item.id for item in items}
        gone = present - wanted
        if gone:
            await asyncio.to_thread(self.store.delete, target, gone)
            report.deleted = len(gone)
        todo = [item for item in items if item.id not in present]
        report.already_present = len(items) - len(todo)

        await self._embed(todo, target, source, report)

        if report.errors and self.settings.fail_on_bad_items:
            raise IndexerError(
                f"{len(report.errors)} items could not be indexed:\n" + _listing(report.errors)
            )
        report.count = await asyncio.to_thread(self.store.count, target)
        held = report.count
        if sharded:
            held = len([i for i in await asyncio.to_thread(self.store.ids, target) if self._mine(i)])
        expected = len(items) - (len(report.errors) - len(source.bad))
        if held != expected:
            raise IndexerError(
                f"{target} holds {held} points of this run's items but {expected} were expected"
            )
        if report.mode == "full" and not sharded:  # shards leave publishing to a final run without shards
            await asyncio.to_thread(
                self.store.finish_version, self.settings.collection, target, keep=self.settings.keep_versions
            )
            report.published = True
        report.seconds = time.perf_counter() - started
        return report

    def _mine(self, point_id: str) -> bool:
        return in_shard(point_id, self.settings.shard_count, self.settings.shard_index)

    async def _choose_target(self, source: Source, vector_names: list[str]) -> tuple[str, IndexReport]:
        alias, fingerprint = self.settings.collection, self.info.fingerprint
        live = await asyncio.to_thread(self.store.collection_info, alias)
        report = IndexReport(alias, "", self.settings.mode, source.identity, fingerprint)
        if self.settings.mode == "incremental" and live is not None:
            if live.fingerprint != fingerprint:
                raise FingerprintMismatch(
                    f"collection {alias!r} was built with model {live.fingerprint[:12]} but the encoder at "
                    f"{self.settings.encoder} serves {fingerprint[:12]}; vectors of two models cannot be "
                    "mixed. Run a full re-index (--mode full) to build a new version with this model."
                )
            built_from = live.extra.get("source")
            if built_from != source.identity:
                raise IndexerError(
                    f"collection {alias!r} was built from {built_from}, not {source.identity}; incremental "
                    "indexing would delete its items. Use --mode full or another --collection."
                )
            if set(vector_names) - set(live.vector_names):
                raise IndexerError(f"collection {alias!r} has no caption vectors; run a full re-index")
            report.collection = live.name
            return live.name, report
        report.mode = "full"
        pending = await asyncio.to_thread(
            self.store.pending_version, alias, fingerprint=fingerprint, source=source.identity
        )
        if pending is None and self.settings.shard_index > 0:
            pending = await self._wait_for_shard_zero(alias, fingerprint, source.identity)
        if pending is not None:
            report.collection, report.resumed = pending, True
            return pending, report
        report.collection = await asyncio.to_thread(
            self.store.create_version,
            alias,
            dim=self.info.embedding_dim,
            fingerprint=fingerprint,
            vector_names=vector_names,
            source=source.identity,
            extra=source.manifest(model_name=self.info.name),
        )
        return report.collection, report

    async def _wait_for_shard_zero(self, alias: str, fingerprint: str, source: str) -> str:
        """Shards > 0 write into the version shard 0 creates, so every shard fills the same one."""
        deadline = time.monotonic() + self.settings.shard_wait_s
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            pending = await asyncio.to_thread(
                self.store.pending_version, alias, fingerprint=fingerprint, source=source
            )
            if pending is not None:
                return pending
        raise IndexerError(
            f"shard {self.settings.shard_index}/{self.settings.shard_count}: shard 0 has created no version of "
            f"{alias!r} for {source} within {self.settings.shard_wait_s:g} s; start shard 0 first"
        )

    async def _embed(self, todo: list[SourceItem], target: str, source: Source, report: IndexReport) -> None:
        ranges = batch_ranges(len(todo), self.batch_size)
        batches: dict[int, _Batch] = {}
        embedder = StreamEmbedder(
            self.client,
            fingerprint=self.info.fingerprint,
            concurrency=self.settings.concurrency,
            deadline_s=self.settings.deadline_s,
            retries=self.settings.retries,
        )
        progress = progress_bar(
            total=len(todo),
            unit="img",
            desc=f"indexing {source.kind}",
            disable=not self.settings.progress,
            dynamic_ncols=True,
        )

        async def load(number: int) -> StreamBatch:
            prepared, bad = await asyncio.to_thread(_prepare_all, [todo[i] for i in ranges[number]])
            captions = None
            if source.has_captions and prepared:
                texts = [p.item.caption or "" for p in prepared]
                captions = asyncio.create_task(self._embed_captions(texts))
            batches[number] = _Batch(prepared, bad, captions)
            return StreamBatch(number, [p.item.id for p in prepared], [p.data for p in prepared])

        async def handle(sent: StreamBatch, reply: encoder_pb2.ImageBatchResult) -> None:
            batch = batches.pop(sent.number)
            caption_vectors = await batch.captions if batch.captions else None
            points, media, bad = _points(batch, reply, caption_vectors, source, self.info.fingerprint)
            await asyncio.to_thread(self._write, target, points, media)
            report.indexed += len(points)
            report.errors.extend(batch.bad + bad)
            progress.update(len(ranges[sent.number]))
            if self.stop_after_batches is not None and embedder.stats.batches + 1 >= self.stop_after_batches:
                raise Interrupted(f"stopped after {self.stop_after_batches} batches")

        try:
            stats = await embedder.run(len(ranges), load, handle)
            report.reconnects = stats.reconnects
        finally:
            progress.close()
            for leftover in batches.values():
                if leftover.captions:
                    leftover.captions.cancel()

    async def _embed_captions(self, texts: list[str]) -> np.ndarray:
        try:
            return await self.client.embed_texts(texts, model=self.info.fingerprint)
        except EncoderInputError:
            # One bad caption (too long) fails the call: embed one by one, marking the failures.
            rows = []
            for text in texts:
                try:
                    rows.append((await self.client.embed_texts([text], model=self.info.fingerprint))[0])
                except EncoderInputError:
                    rows.append(np.full(self.info.embedding_dim, np.nan, dtype=np.float32))
            return np.stack(rows)

    def _write(self, target: str, points: list[Point], media: list[bytes]) -> None:
        # Media first: a point never names a file that is not there.
        for png in media:
            self.media.put(png)
        self.store.upsert(target, points)


def _prepare_all(items: Sequence[SourceItem]) -> tuple[list[PreparedItem], list[BadItem]]:
    prepared, bad = [], []
    for item in items:
        try:
            prepared.append(prepare(item))
        except ItemError as exc:
            bad.append(BadItem(item.relative_path, str(exc)))
    return prepared, bad


def _points(
    batch: _Batch,
    reply: encoder_pb2.ImageBatchResult,
    caption_vectors: np.ndarray | None,
    source: Source,
    fingerprint: str,
) -> tuple[list[Point], list[bytes], list[BadItem]]:
    points, media, bad = [], [], []
    for position, (prepared, result) in enumerate(zip(batch.items, reply.results, strict=True)):
        item = prepared.item
        if result.error:
            bad.append(BadItem(item.relative_path, result.error))
            continue
        vectors = {IMAGE_VECTOR: np.asarray(result.embedding.values, dtype=np.float32)}
        if caption_vectors is not None:
            caption = caption_vectors[position]
            if np.isnan(caption).any():
                bad.append(BadItem(item.relative_path, "caption rejected by the encoder (too long?)"))
                continue
            vectors[CAPTION_VECTOR] = caption
        key = media_key(prepared.media_png)
        payload: dict[str, Any] = {
            **item.payload,
            "source": source.kind,
            "relative_path": item.relative_path,
            "media_key": key,
            "model_fingerprint": fingerprint,
        }
        points.append(Point(id=item.id, vectors=vectors, payload=payload))
        media.append(prepared.media_png)
    return points, media, bad


def _listing(bad: Sequence[BadItem], limit: int = 10) -> str:
    lines = [f"  {b.relative_path}: {b.message}" for b in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more")
    return "\n".join(lines)


async def run_index(
    settings: IndexerSettings,
    *,
    stop_after_batches: int | None = None,
    store: VectorStore | None = None,
) -> IndexReport:
    """One run with `settings`; raises IndexerError (or a StoreError/EncoderError) with a user message.

    `store`: an open store to write to (left open), instead of opening the configured one.
    """
    try:
        source = open_source(settings)
    except SourceError as exc:
        raise IndexerError(str(exc)) from None
    client = EncoderClient(
        settings.encoder,
        timeout_s=settings.deadline_s,
        retries=settings.retries,
        api_key=settings.encoder_api_key.get_secret_value() if settings.encoder_api_key else None,
    )
    try:
        try:
            info = await client.model_info(settings.model)
        except EncoderModelNotFound as exc:
            raise IndexerError(f"the encoder cannot embed with model {settings.model!r}: {exc}") from None
        except EncoderInputError as exc:  # an encoder of several models, and no model named
            raise IndexerError(f"name the model to embed with (INDEXER_MODEL): {exc}") from None
        except EncoderError as exc:
            raise IndexerError(f"cannot reach the encoder at {settings.encoder}: {exc}") from None
        owned = store is None
        if store is None:
            store = await asyncio.to_thread(
                open_store,
                settings.qdrant_url,
                settings.store_path,
                settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
                layout=ClusterLayout(
                    shard_number=settings.qdrant_shard_number,
                    replication_factor=settings.qdrant_replication_factor,
                    write_consistency_factor=settings.qdrant_write_consistency_factor,
                ),
            )
        try:
            job = IndexJob(settings, store, client, info, stop_after_batches=stop_after_batches)
            return await job.run(source)
        finally:
            if owned:
                await asyncio.to_thread(store.close)
    finally:
        await client.close()


# OSError: an unwritable media or store directory, a full disk.
USER_ERRORS = (IndexerError, StoreError, EncoderUnavailable, EncoderInputError, OSError)
