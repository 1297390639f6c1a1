"""Prometheus metrics (namespace clipsearch_gateway_), one registry per gateway instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

NAMESPACE = "clipsearch_gateway"
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GatewayMetrics:
    def __init__(self) -> None:
        # Own registry: several gateways (tests) in one process must not collide.
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "requests",
            "Requests answered, by front end, operation and outcome",
            ["frontend", "operation", "outcome"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "request_seconds",
            "Request latency, by front end and operation",
            ["frontend", "operation"],
            namespace=NAMESPACE,
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self.stage_seconds = Histogram(
            "stage_seconds",
            "Time spent per query stage (embed: encoder call; search: store call)",
            ["stage"],
            namespace=NAMESPACE,
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self.query_cache = Counter(
            "query_cache",
            "Text-query embeddings looked up in the gateway's cache, by result (hit or miss)",
            ["result"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.encoder_call_texts = Histogram(
            "encoder_call_texts",
            "Text queries sent together in one EmbedText call",
            namespace=NAMESPACE,
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )
        self.shed = Counter(
            "shed",
            "Queries refused at once for lack of capacity (503 / RESOURCE_EXHAUSTED)",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.dependency_errors = Counter(
            "dependency_errors",
            "Encoder or store failures seen while answering",
            ["dependency"],
            namespace=NAMESPACE,
            registry=self.registry,
        )

    def observe(self, frontend: str, operation: str, outcome: str, seconds: float) -> None:
        self.requests.labels(frontend, operation, outcome).inc()
        self.request_seconds.labels(frontend, operation).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
