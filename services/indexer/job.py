"""One indexing run: list the source, embed what is missing, write points and media, publish.

Full mode builds a new version behind the alias and swaps it in when complete
(resuming an unfinished version of the same model and source if one exists).
Incremental mode adds new items to the live version and removes items that
left the source.

A full index with another model than the live version's is an upgrade: the new version is built
beside the live one, both are evaluated on the source's query set (services/indexer/evaluation.py),
and the alias moves only when the new one scores at least as well; a worse one is dropped. The
version it replaces is kept, and `run_rollback` points the alias back at it.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from clipsearch.preprocess import SketchNormalization
from clipsearch.progress import progress_bar
from clipsearch.store import (
    CAPTION_VECTOR,
    IMAGE_VECTOR,
    ClusterLayout,
    CollectionInfo,
    FingerprintMismatch,
    Point,
    StoreError,
    StoreUnavailable,
    VectorStore,
    open_store,
)
from clipsearch.v1 import encoder_pb2

from .evaluation import Evaluation, QuerySet, Score, build_query_set, recorded_score, score_version
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
    evaluation: Evaluation | None = None

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
        if self.evaluation is not None:
            lines.append(self.evaluation.summary())
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
        try:
            self.sketch_normalization = SketchNormalization(info.sketch_normalization or "none")
        except ValueError:  # a normalisation this indexer does not know: drawings go as they are
            log.warning("model %s: unknown sketch normalisation %r", info.name, info.sketch_normalization)
            self.sketch_normalization = SketchNormalization.NONE

    async def run(self, source: Source) -> IndexReport:
        started = time.perf_counter()
        vector_names = [IMAGE_VECTOR, CAPTION_VECTOR] if source.has_captions else [IMAGE_VECTOR]
        query_set = build_query_set(
            source.query_groups, source.items, limit=self.settings.eval_queries, k=self.settings.eval_k
        )
        if self.settings.mode == "full":
            await self._check_gate(source, query_set)
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
            evaluating = time.perf_counter()
            report.evaluation = evaluation = await self._evaluate(source, target, query_set)
            evaluation.seconds = time.perf_counter() - evaluating
            alias = self.settings.collection
            if evaluation.published:
                await asyncio.to_thread(
                    self.store.finish_version,
                    alias,
                    target,
                    keep=self.settings.keep_versions,
                    extra={"evaluation": evaluation.manifest()},
                )
                report.published = True
            else:
                # Dropped, so it neither takes a slot of keep_versions nor is resumed by the next run.
                await asyncio.to_thread(self.store.drop_version, alias, target)
        report.seconds = time.perf_counter() - started
        return report

    # --- the upgrade gate ---

    def _gated(self, live: CollectionInfo | None, source: Source) -> bool:
        """Whether publishing needs an evaluation against the live version: another model's index of
        the same source (a rebuild with the same model, or of another source, is not an upgrade)."""
        return (
            live is not None
            and live.fingerprint != self.info.fingerprint
            and live.extra.get("source") == source.identity
        )

    async def _check_gate(self, source: Source, query_set: QuerySet | None) -> None:
        """Before any work: refuse an upgrade that could not be evaluated."""
        live = await asyncio.to_thread(self.store.collection_info, self.settings.collection)
        if not self.settings.gate or not self._gated(live, source):
            return
        assert live is not None
        if query_set is None:
            raise IndexerError(
                f"cannot evaluate the new model on {source.identity}: it has no class names to build "
                f"queries from (or --eval-queries is 0). Pass --no-gate to publish {self.info.name!r}'s "
                f"version of {self.settings.collection!r} without comparing it."
            )
        if recorded_score(live.extra, query_set) is not None:
            return  # what the live version scored when it was published stands for it
        served = {model.fingerprint for model in await self.client.list_models()}
        if live.fingerprint not in served:
            raise IndexerError(
                f"the live version {live.name} of {self.settings.collection!r} was built by model "
                f"{live.extra.get('model_name', '?')} ({live.fingerprint[:12]}), which the encoder at "
                f"{self.settings.encoder} no longer serves, and it recorded no score on this query set: "
                "the new model cannot be compared with it. Serve the old model beside the new one, or "
                "pass --no-gate to publish without comparing."
            )

    async def _evaluate(self, source: Source, target: str, query_set: QuerySet | None) -> Evaluation:
        alias = self.settings.collection
        live = await asyncio.to_thread(self.store.collection_info, alias)
        evaluation = Evaluation(query_set, gated=self.settings.gate and self._gated(live, source))
        if query_set is not None:
            evaluation.candidate = await score_version(
                self.client,
                self.store,
                target,
                fingerprint=self.info.fingerprint,
                model_name=self.info.name,
                query_set=query_set,
            )
        if live is None:
            evaluation.reason = "the first version"
        elif live.fingerprint == self.info.fingerprint:
            evaluation.reason = "the live version's model"
        elif live.extra.get("source") != source.identity:
            evaluation.reason = f"replaces a version of another source ({live.extra.get('source')})"
        elif query_set is not None:
            evaluation.live = await self._live_score(live, query_set)
        if not evaluation.gated:
            if not evaluation.reason:
                evaluation.reason = "--no-gate"
            return evaluation
        if evaluation.candidate is None or evaluation.live is None:
            raise IndexerError(
                f"cannot compare {target} with the live version {live.name if live else '?'}: it recorded "
                "no score on this query set, and it cannot be measured now (its model is not served, or "
                "another process holds it; see the log). Re-run once it can be (the build resumes), or "
                "pass --no-gate."
            )
        evaluation.published = evaluation.candidate.value >= evaluation.live.value
        evaluation.reason = (
            "at least as good as the live version" if evaluation.published else "worse than the live version"
        )
        return evaluation

    async def _live_score(self, live: CollectionInfo, query_set: QuerySet) -> Score | None:
        """What the live version scored on this query set when it was published (the same model on
        the same items: measuring it again would give the same, and needs neither its model served
        nor the version opened, which another process, a gateway, may hold), else measured now with
        its own model; None when neither can be had."""
        model_name = str(live.extra.get("model_name") or live.fingerprint[:12])
        recorded = recorded_score(live.extra, query_set)
        if recorded is not None:
            return Score(live.name, live.fingerprint, model_name, recorded, recorded=True)
        try:
            return await score_version(
                self.client,
                self.store,
                live.name,
                fingerprint=live.fingerprint,
                model_name=model_name,
                query_set=query_set,
            )
        except (EncoderModelNotFound, StoreUnavailable) as exc:
            log.warning("cannot measure the live version %s: %s", live.name, exc)
            return None

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
            prepared, bad = await asyncio.to_thread(
                _prepare_all, [todo[i] for i in ranges[number]], self.sketch_normalization
            )
            captions = None
            if source.has_captions and prepared:
                captions = asyncio.create_task(self._embed_captions([p.item for p in prepared]))
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

    async def _embed_captions(self, items: list[SourceItem]) -> np.ndarray:
        """One caption vector per item (NaN where the encoder refuses every form of its caption).
        Each distinct caption is embedded once (an emoji's four styles share theirs)."""
        texts = list(dict.fromkeys(item.caption or "" for item in items))
        try:
            vectors = dict(zip(texts, await self._embed_texts(texts), strict=True))
        except EncoderInputError:
            # One caption too long for the model fails the call: embed one by one; a refused caption
            # falls back to its shorter forms (the first accepted is used), else is marked NaN.
            vectors = {}
            for item in items:
                text = item.caption or ""
                if text not in vectors:
                    vectors[text] = await self._embed_longest([text, *item.caption_fallbacks])
        return np.stack([vectors[item.caption or ""] for item in items])

    async def _embed_longest(self, forms: list[str]) -> np.ndarray:
        """The vector of the first of `forms` (longest first) the encoder accepts; a binary search,
        since a form that fits makes every shorter one fit."""
        low, high, found = 0, len(forms) - 1, None
        while low <= high:
            middle = (low + high) // 2
            try:
                vector = (await self._embed_texts([forms[middle]]))[0]
            except EncoderInputError:
                low = middle + 1
                continue
            found, high = vector, middle - 1
        if found is None:
            return np.full(self.info.embedding_dim, np.nan, dtype=np.float32)
        return found

    async def _embed_texts(self, texts: list[str]) -> np.ndarray:
        return await self.client.embed_texts(texts, model=self.info.fingerprint)

    def _write(self, target: str, points: list[Point], media: list[bytes]) -> None:
        # Media first: a point never names a file that is not there.
        for png in media:
            self.media.put(png)
        self.store.upsert(target, points)


def _prepare_all(
    items: Sequence[SourceItem], sketch_normalization: SketchNormalization
) -> tuple[list[PreparedItem], list[BadItem]]:
    prepared, bad = [], []
    for item in items:
        try:
            prepared.append(prepare(item, sketch_normalization))
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


def _client(settings: IndexerSettings) -> EncoderClient:
    return EncoderClient(
        settings.encoder,
        timeout_s=settings.deadline_s,
        retries=settings.retries,
        api_key=settings.encoder_api_key.get_secret_value() if settings.encoder_api_key else None,
    )


def _open_store(settings: IndexerSettings, expected_points: int | None = None) -> VectorStore:
    return open_store(
        settings.qdrant_url,
        settings.store_path,
        settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
        layout=ClusterLayout(
            shard_number=settings.qdrant_shard_number,
            replication_factor=settings.qdrant_replication_factor,
            write_consistency_factor=settings.qdrant_write_consistency_factor,
        ),
        expected_points=expected_points,
    )


async def _served_model(client: EncoderClient, settings: IndexerSettings) -> encoder_pb2.ModelInfo:
    """The model to embed with, waiting up to `model_wait_s` for the encoder to serve it."""
    deadline = time.monotonic() + settings.model_wait_s
    while True:
        try:
            return await client.model_info(settings.model)
        except EncoderUnavailable as exc:  # not up yet, loading, or not serving that model yet
            if time.monotonic() >= deadline:
                raise
            log.info("waiting for the encoder to serve model %r: %s", settings.model or "(its only one)", exc)
            await asyncio.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))


async def run_index(
    settings: IndexerSettings,
    *,
    stop_after_batches: int | None = None,
    store: VectorStore | None = None,
    source: Source | None = None,
) -> IndexReport:
    """One run with `settings`; raises IndexerError (or a StoreError/EncoderError) with a user message.

    `store`: an open store to write to (left open), instead of opening the configured one.
    `source`: the items to index instead of the configured source (bench.indexer_scale generates them).
    """
    if source is None:
        try:
            source = open_source(settings)
        except SourceError as exc:
            raise IndexerError(str(exc)) from None
    client = _client(settings)
    try:
        try:
            info = await _served_model(client, settings)
        except EncoderModelNotFound as exc:
            raise IndexerError(f"the encoder cannot embed with model {settings.model!r}: {exc}") from None
        except EncoderInputError as exc:  # an encoder of several models, and no model named
            raise IndexerError(f"name the model to embed with (INDEXER_MODEL): {exc}") from None
        except EncoderError as exc:
            raise IndexerError(f"cannot reach the encoder at {settings.encoder}: {exc}") from None
        owned = store is None
        if store is None:
            # The embedded store's settings follow the collection's size.
            store = await asyncio.to_thread(_open_store, settings, len(source.items))
        try:
            job = IndexJob(settings, store, client, info, stop_after_batches=stop_after_batches)
            return await job.run(source)
        finally:
            if owned:
                await asyncio.to_thread(store.close)
    finally:
        await client.close()


@dataclass
class RollbackReport:
    alias: str
    restored: CollectionInfo
    replaced: CollectionInfo

    def summary(self) -> str:
        def described(info: CollectionInfo) -> str:
            evaluation = info.extra.get("evaluation")
            score = evaluation.get("score") if isinstance(evaluation, dict) else None
            scored = f", evaluation score {score:.3f}" if isinstance(score, int | float) else ""
            return (
                f"{info.name} (model {info.extra.get('model_name', '?')} {info.fingerprint[:12]}, "
                f"{info.count} points{scored})"
            )

        return (
            f"rolled back {self.alias!r} from {described(self.replaced)} to {described(self.restored)}; "
            f"--rollback again returns to {self.replaced.name}"
        )


async def run_rollback(settings: IndexerSettings, *, store: VectorStore | None = None) -> RollbackReport:
    """Point the alias at the version published before the live one. Refused (IndexerError) when
    there is none, or when the encoder does not serve the model that built it: the gateway could
    not search it."""
    alias = settings.collection
    owned = store is None
    if store is None:
        store = await asyncio.to_thread(_open_store, settings)
    try:
        live = await asyncio.to_thread(store.collection_info, alias)
        if live is None:
            raise IndexerError(f"no collection {alias!r} to roll back")
        previous = await asyncio.to_thread(store.previous_version, alias)
        if previous is None:
            raise IndexerError(
                f"{alias!r} has no earlier version to roll back to: only the live one, {live.name}, is kept "
                f"(keep_versions={settings.keep_versions} keeps the live version and "
                f"{settings.keep_versions - 1} earlier)"
            )
        async with _client(settings) as client:
            try:
                served = await client.list_models()
            except EncoderError as exc:
                raise IndexerError(
                    f"cannot reach the encoder at {settings.encoder} to check it serves the model of "
                    f"{previous.name}: {exc}"
                ) from None
        if previous.fingerprint not in {model.fingerprint for model in served}:
            names = ", ".join(f"{m.name} ({m.fingerprint[:12]})" for m in served) or "none"
            raise IndexerError(
                f"refusing to roll {alias!r} back to {previous.name}: it was built by model "
                f"{previous.extra.get('model_name', '?')} ({previous.fingerprint[:12]}), which the encoder "
                f"at {settings.encoder} does not serve (it serves: {names}). Serve that model first."
            )
        extra = {"rolled_back_from": live.name, "rolled_back_at": time.time()}
        await asyncio.to_thread(
            store.restore_version, alias, previous.name, keep=settings.keep_versions, extra=extra
        )
        # Described from what was read before, not asked again: asking may open the version here
        # (the embedded store), which a gateway now needs to open.
        restored = dataclasses.replace(previous, alias=alias, extra={**previous.extra, **extra})
        return RollbackReport(alias, restored, live)
    finally:
        if owned:
            await asyncio.to_thread(store.close)


# OSError: an unwritable media or store directory, a full disk.
USER_ERRORS = (IndexerError, StoreError, EncoderUnavailable, EncoderInputError, OSError)
