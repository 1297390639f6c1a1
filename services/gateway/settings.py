"""Gateway settings, from GATEWAY_* environment variables."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from clipsearch.affinity import cpu_setting


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    # Encoder gRPC target ("host:port"; a DNS name with several replicas is load-balanced).
    encoder: str = "localhost:50051"
    encoder_timeout_s: float = Field(default=5.0, gt=0)
    encoder_api_key: SecretStr | None = None

    # A Qdrant server URL, or None for the embedded store at `store_path`.
    qdrant_url: str | None = None
    qdrant_api_key: SecretStr | None = None
    store_path: str = "var/qdrant"
    # The alias the indexer publishes.
    collection: str = "mnist"
    media_dir: str = "var/media"

    host: str = "127.0.0.1"
    # CPUs to run on ("1", "2-3"); unset: all. See clipsearch/affinity.py (off by default).
    cpus: str | None = None
    http_port: int = Field(default=8080, ge=0, le=65535)
    grpc_port: int = Field(default=50052, ge=0, le=65535)

    # One uploaded image or sketch; a request body may hold two (a mixed query's base64 parts) plus
    # the form around them. Past it: 413.
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    max_k: int = Field(default=100, ge=1)
    max_offset: int = Field(default=10_000, ge=0)
    max_labels: int = Field(default=100, ge=1)

    # What the HTTP server reads (services/gateway/http_limits.py; docs/reliability.md lists what a
    # client gets past each): the request line (414), the header fields together and their number
    # (431), how long the headers may take to arrive and how long a body may pause (408), open
    # connections (503), values in a JSON body (413). Idle kept-alive connections close after
    # http_keepalive_s.
    http_max_request_line_bytes: int = Field(default=8 * 1024, ge=256)
    http_max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    http_max_headers: int = Field(default=100, ge=8)
    http_header_timeout_s: float = Field(default=10.0, gt=0)
    http_body_timeout_s: float = Field(default=10.0, gt=0)
    http_keepalive_s: float = Field(default=5.0, gt=0)
    http_max_connections: int = Field(default=1024, ge=1)
    max_json_values: int = Field(default=10_000, ge=64)
    # What a refused client is told to wait before trying again (HTTP Retry-After, gRPC
    # grpc-retry-pushback-ms).
    retry_after_s: int = Field(default=1, ge=1)
    # Overload (clipsearch.overload): queries in progress at once, HTTP and gRPC together; past
    # them up to max_queued wait, each at most max_queue_wait_s; the rest are refused at once
    # (503 with Retry-After, RESOURCE_EXHAUSTED). Probes, /info and media are not counted.
    max_in_flight: int = Field(default=32, ge=1)
    max_queued: int = Field(default=32, ge=0)
    max_queue_wait_s: float = Field(default=0.05, ge=0)

    # Browser origins allowed to call the API from other sites; empty: same origin only.
    cors_origins: list[str] = Field(default_factory=list)
    # When set, every API call needs it (header / gRPC metadata "x-api-key").
    api_key: SecretStr | None = None
    # Base URL for image links in results ("https://search.example.org"); relative links when unset.
    public_url: str | None = None

    # How long model and collection facts are reused before they are asked for again.
    info_ttl_s: float = Field(default=5.0, ge=0)
    # Text-query embeddings kept per model fingerprint (LRU, ~0.5 KiB each at 128 dims); 0 turns it off.
    query_cache_size: int = Field(default=4096, ge=0)
    # Concurrent text queries share EmbedText calls (each call costs the encoder ~1.1 ms of CPU
    # whatever it carries): at most this many calls in flight, each with at most this many texts.
    # encoder_calls_in_flight=0 sends every query in its own call.
    encoder_calls_in_flight: int = Field(default=2, ge=0)
    encoder_texts_per_call: int = Field(default=32, ge=1)

    @field_validator("cpus")
    @classmethod
    def _cpu_list(cls, value: str | None) -> str | None:
        return cpu_setting(value)

    @field_validator(
        "api_key", "encoder_api_key", "qdrant_api_key", "qdrant_url", "public_url", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # GATEWAY_API_KEY= (empty, as compose files and .env templates often leave it) means none.
        return None if value == "" else value
