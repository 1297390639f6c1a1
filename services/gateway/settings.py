"""Gateway settings, from GATEWAY_* environment variables or flags (`--help`)."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from clipsearch.affinity import cpu_setting
from clipsearch.bootstrap import ServiceSettings


class GatewaySettings(ServiceSettings):
    """The search gateway: HTTP API, web page and gRPC Search service over one collection."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_")

    encoder: str = "localhost:50051"
    """Encoder gRPC target ("host:port"; a DNS name with several replicas is load-balanced)."""
    encoder_timeout_s: float = Field(default=5.0, gt=0)
    encoder_api_key: SecretStr | None = None

    qdrant_url: str | None = None
    """A Qdrant server URL; unset: the embedded store at store_path."""
    qdrant_api_key: SecretStr | None = None
    store_path: str = "var/qdrant"
    collection: str = "mnist"
    """The alias the indexer publishes."""
    media_dir: str = "var/media"

    host: str = "127.0.0.1"
    cpus: str | None = None
    """CPUs to run on ("1", "2-3"); unset: all. See clipsearch/affinity.py (off by default)."""
    http_port: int = Field(default=8080, ge=0, le=65535)
    grpc_port: int = Field(default=50052, ge=0, le=65535)

    # One uploaded image or sketch; a request body may hold two (a mixed query's base64 parts) plus
    # the form around them. Past it: 413.
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    max_k: int = Field(default=100, ge=1)
    max_offset: int = Field(default=10_000, ge=0)
    max_labels: int = Field(default=100, ge=1)

    # What the HTTP server reads (services/gateway/http_limits.py; docs/reliability.md lists what a
    # client gets past each).
    http_max_request_line_bytes: int = Field(default=8 * 1024, ge=256)
    """The request target, at most (past it: 414)."""
    http_max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    """All header fields together, at most (past it: 431)."""
    http_max_headers: int = Field(default=100, ge=8)
    """Header fields, at most (past it: 431)."""
    http_header_timeout_s: float = Field(default=10.0, gt=0)
    """How long a request line and headers may take to arrive (past it: 408)."""
    http_body_timeout_s: float = Field(default=10.0, gt=0)
    """How long a body may pause while it arrives (past it: 408)."""
    http_keepalive_s: float = Field(default=5.0, gt=0)
    """How long an idle kept-alive connection stays open."""
    http_max_connections: int = Field(default=1024, ge=1)
    """Open connections, at most (past it: 503 with Retry-After)."""
    max_json_values: int = Field(default=10_000, ge=64)
    """Values in a JSON body, counted as it arrives (past it: 413)."""
    retry_after_s: int = Field(default=1, ge=1)
    """What a refused client is told to wait before trying again (HTTP Retry-After, gRPC
    grpc-retry-pushback-ms)."""
    # Overload (clipsearch.overload): queries in progress at once, HTTP and gRPC together; past them
    # up to max_queued wait, each at most max_queue_wait_s; the rest are refused at once (503 with
    # Retry-After, RESOURCE_EXHAUSTED). Probes, collection listings and media are not counted.
    max_in_flight: int = Field(default=16, ge=1)
    """Queries in progress at once, at most. Admitted queries take about this many divided by the
    rate the stack answers: size it to the machine (python -m bench.overload)."""
    max_queued: int = Field(default=16, ge=0)
    """Queries waiting for a slot, at most; the rest are refused at once."""
    max_queue_wait_s: float = Field(default=0.05, ge=0)
    """How long a query may wait for a slot before it is refused."""

    cors_origins: list[str] = Field(default_factory=list)
    """Browser origins allowed to call the API from other sites; empty: same origin only."""
    api_key: SecretStr | None = None
    """When set, every API call needs it (header / gRPC metadata x-api-key)."""
    public_url: str | None = None
    """Base URL for image links in results ("https://search.example.org"); relative links when unset."""

    info_ttl_s: float = Field(default=5.0, ge=0)
    """How long model and collection facts are reused before they are asked for again."""
    query_cache_size: int = Field(default=4096, ge=0)
    """Text-query embeddings kept per model fingerprint (LRU, ~0.5 KiB each at 128 dims); 0 turns it off."""
    # Each EmbedText call costs the encoder ~1.1 ms of CPU whatever it carries, so concurrent
    # text queries share calls.
    encoder_calls_in_flight: int = Field(default=2, ge=0)
    """Shared EmbedText calls in flight at most; 0 sends every text query in its own call."""
    encoder_texts_per_call: int = Field(default=32, ge=1)
    """Texts in one shared EmbedText call at most."""

    @field_validator("cpus")
    @classmethod
    def _cpu_list(cls, value: str | None) -> str | None:
        return cpu_setting(value)
