"""The encoder gRPC server: Encoder service, health, reflection, optional API key, metrics side port.

Health (grpc.health.v1) answers for these service names:
- "" (the whole server) and "clipsearch.v1.Encoder": SERVING once every model is loaded;
- "clipsearch.v1.Encoder/NAME" and "clipsearch.v1.Encoder/FINGERPRINT" for each model
  (clipsearch.encoder_client.model_health_service): SERVING once that model is loaded, so a
  caller of one model need not wait for the others. A fingerprint is known once its model is loaded.
All turn NOT_SERVING when the server stops.

While serving, the checkpoint directories are looked at every ENCODER_RELOAD_S seconds
(ModelRegistry.refresh): a new model directory starts serving under its name, a changed one
replaces its name's weights (the replaced weights stay served by fingerprint, ENCODER_KEEP_REPLACED
per name), without a restart; health follows (a new fingerprint SERVING, an unloaded one NOT_SERVING).

`serve` runs it until SIGTERM/SIGINT (the `python -m services.encoder` entry
point); `serve_in_thread` runs it on its own event loop in a background thread
(tests, benchmarks, and other services' tests through the `encoder_target` fixture).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from clipsearch.encoder_client import model_health_service
from clipsearch.grpc_guard import DecodeGuard
from clipsearch.grpc_request_id import RequestIdInterceptor, ServerInterceptor
from clipsearch.v1 import encoder_pb2, encoder_pb2_grpc
from services.encoder.auth import ApiKeyInterceptor
from services.encoder.metrics import EncoderMetrics, MetricsServer
from services.encoder.runtime import EncoderRuntime, ModelRegistry
from services.encoder.servicer import EncoderServicer
from services.encoder.settings import EncoderSettings

log = logging.getLogger(__name__)

ENCODER_SERVICE = encoder_pb2.DESCRIPTOR.services_by_name["Encoder"].full_name
HEALTH_NAMES = ("", ENCODER_SERVICE)  # overall health and the Encoder service's
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# serve_in_thread gives up on a start that takes longer (a model load from a slow disk).
THREAD_START_TIMEOUT_S = 300.0


class EncoderServer:
    """One server instance. Create, `start()` and `load_models()` it on the event loop that will run it."""

    def __init__(self, settings: EncoderSettings) -> None:
        self.settings = settings
        self.metrics = EncoderMetrics()
        self.servicer = EncoderServicer(settings, self.metrics)
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # missing from the stubs
        self.port = 0
        self.metrics_port: int | None = None
        self._grpc: grpc.aio.Server | None = None
        self._metrics_server: MetricsServer | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind and accept calls, health NOT_SERVING until `load_models()` is done."""
        settings = self.settings
        for name in (*HEALTH_NAMES, *(model_health_service(s.name) for s in settings.model_sources())):
            await self.health.set(name, NOT_SERVING)
        # The request id first: refused calls are logged with theirs too.
        interceptors: list[ServerInterceptor] = [RequestIdInterceptor(issue=False)]
        if settings.api_key:
            interceptors.append(ApiKeyInterceptor(settings.api_key.get_secret_value()))
        # Innermost: a caller without the key is refused as such, whatever bytes it sent.
        interceptors.append(DecodeGuard(self._count_undecodable))
        self._grpc = grpc.aio.server(
            interceptors=interceptors,
            # Calls past this are refused by gRPC itself, RESOURCE_EXHAUSTED, before any work.
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
            ],
        )
        encoder_pb2_grpc.add_EncoderServicer_to_server(self.servicer, self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(
            [ENCODER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], self._grpc
        )
        address = (
            f"[{settings.host}]:{settings.port}"
            if ":" in settings.host
            else f"{settings.host}:{settings.port}"
        )
        self.port = self._grpc.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind the encoder to {address}")
        await self._grpc.start()
        if settings.metrics_enabled:
            self._metrics_server = MetricsServer(self.metrics, settings.host, settings.metrics_port)
            self.metrics_port = self._metrics_server.port
        log.info("encoder listening on %s:%d (metrics port %s)", settings.host, self.port, self.metrics_port)

    def _count_undecodable(self, method: str) -> None:
        self.metrics.requests.labels(method=method.rsplit("/", 1)[-1], code="INVALID_ARGUMENT").inc()

    async def load_models(self) -> None:
        """Load the checkpoints off the event loop, each SERVING once loaded, the whole server at the end.

        CheckpointError (naming the model) when one cannot be loaded: the server does not serve.
        """
        if self.settings.models is not None and "checkpoint" in self.settings.model_fields_set:
            log.info("serving ENCODER_MODELS; ENCODER_CHECKPOINT=%s is not used", self.settings.checkpoint)
        registry = ModelRegistry(self.settings, self.metrics)
        self.servicer.models = registry
        await registry.load_all(self._model_loaded)
        for name in HEALTH_NAMES:
            await self.health.set(name, SERVING)
        log.info("encoder serving %s", registry.describe())
        if self.settings.reload_s > 0:
            self._watcher = asyncio.create_task(self._watch(registry))

    async def _watch(self, registry: ModelRegistry) -> None:
        """Pick up new and changed checkpoints until the server stops."""
        while True:
            await asyncio.sleep(self.settings.reload_s)
            try:
                if await registry.refresh(self._model_loaded, self._model_unloaded):
                    log.info("encoder serving %s", registry.describe())
            except Exception:  # a failed look must not end the watching; the next one may work
                log.exception("looking for new checkpoints failed")

    async def _model_unloaded(self, runtime: EncoderRuntime) -> None:
        await self.health.set(model_health_service(runtime.fingerprint), NOT_SERVING)

    async def _model_loaded(self, runtime: EncoderRuntime) -> None:
        for name in (runtime.name, runtime.fingerprint):
            await self.health.set(model_health_service(name), SERVING)
        log.info(
            "model %s loaded from %s (fingerprint %s)",
            runtime.name,
            runtime.checkpoint.path,
            runtime.fingerprint[:12],
        )

    async def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING, refuse new calls, let in-flight ones finish within the grace period."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        await self.health.enter_graceful_shutdown()
        if self._grpc is not None:
            await self._grpc.stop(grace)
            self._grpc = None
        registry, self.servicer.models = self.servicer.models, None
        if registry is not None:
            await registry.close()
        if self._metrics_server is not None:
            self._metrics_server.stop()
            self._metrics_server = None


async def serve(settings: EncoderSettings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully. CheckpointError propagates."""
    server = EncoderServer(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await server.start()
        loading = asyncio.create_task(server.load_models())
        signalled = asyncio.create_task(stopping.wait())
        await asyncio.wait({loading, signalled}, return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            loading.result()  # a failed load ends the server here
            await signalled
        log.info("shutting down (grace %.1f s)", settings.shutdown_grace_s)
    finally:
        await server.stop()
    log.info("encoder stopped")


@contextmanager
def serve_in_thread(settings: EncoderSettings) -> Iterator[EncoderServer]:
    """Run a server on its own event loop in a daemon thread; yields it once SERVING."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="encoder-server", daemon=True)
    thread.start()

    async def create_and_start() -> EncoderServer:
        server = EncoderServer(settings)
        try:
            await server.start()
            await server.load_models()
        except BaseException:
            await server.stop(0)
            raise
        return server

    try:
        server = asyncio.run_coroutine_threadsafe(create_and_start(), loop).result(THREAD_START_TIMEOUT_S)
        try:
            yield server
        finally:
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(settings.shutdown_grace_s + 30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
