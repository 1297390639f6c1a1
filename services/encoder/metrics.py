"""Prometheus metrics of one encoder server, in its own registry so several servers can share a process."""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

NAMESPACE = "clipsearch_encoder"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class EncoderMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "requests",
            "Encoder RPCs by method and final status code.",
            ["method", "code"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.latency = Histogram(
            "request_latency_seconds",
            "Encoder RPC latency by method.",
            ["method"],
            namespace=NAMESPACE,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "batch_size",
            "Items per model forward pass, by model and kind (text or image).",
            ["model", "kind"],
            namespace=NAMESPACE,
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.items = Counter(
            "items",
            "Items embedded, by model and kind (text, image, sketch).",
            ["model", "kind"],
            namespace=NAMESPACE,
            registry=self.registry,
        )


class MetricsServer:
    """The /metrics HTTP endpoint on a side port; stoppable, unlike the module-level default."""

    def __init__(self, metrics: EncoderMetrics, host: str, port: int) -> None:
        self._server: WSGIServer
        self._server, self._thread = start_http_server(port, addr=host, registry=metrics.registry)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
