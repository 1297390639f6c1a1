"""Encoder service settings, read from the environment (prefix ENCODER_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from clipsearch.acceleration import AUTO, parse_cpu_mode
from clipsearch.affinity import cpu_setting
from clipsearch.image_limits import DEFAULT_MAX_DECODED_BYTES
from clipsearch.onnx_text import parse_text_runtime
from clipsearch.preprocess import DEFAULT_MAX_PIXELS

MIB = 1024 * 1024


class EncoderSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENCODER_", extra="ignore")

    # A checkpoint directory (save_pretrained layout) or a Hugging Face hub id; the default is the
    # demo's model (scripts/demo.py): the compact MNIST model with its text tower distilled.
    checkpoint: str = "var/checkpoints/mnist-compact-distilled"
    host: str = "0.0.0.0"
    # 0 binds any free port (tests); the bound port is reported by the server.
    port: int = Field(default=50051, ge=0, le=65535)
    # Prometheus /metrics side port; 0 binds any free port.
    metrics_port: int = Field(default=9101, ge=0, le=65535)
    metrics_enabled: bool = True
    device: str = "auto"
    dtype: str = "auto"
    # How the model runs on a CPU (clipsearch.acceleration): auto (bf16 where the CPU does bf16
    # natively and the model is wide enough, else fp32), fp32, bf16, bf16-autocast, int8-dynamic.
    cpu_mode: str = AUTO
    # How texts are embedded on a CPU (clipsearch.onnx_text): auto (the text tower on ONNX Runtime
    # in int8 where it keeps the probe's cosine with torch, else torch), torch, onnx, onnx-int8.
    text_runtime: str = AUTO
    # Where exported ONNX text towers are cached (default ~/.cache/clipsearch/onnx).
    onnx_cache_dir: Path | None = None
    # Micro-batching across concurrent requests: a batch closes at this many items or after
    # this long, whichever comes first. No window by default: requests that queue while the
    # model runs form the next batch, so batches grow with load and a lone request never waits
    # (a 5 ms window cost one text query 6 ms and bought no throughput under load).
    max_batch_size: int = Field(default=64, ge=1)
    max_wait_ms: float = Field(default=0.0, ge=0)
    batching: bool = True
    max_items_per_request: int = Field(default=256, ge=1)
    # Overload (clipsearch.overload): past these the encoder refuses at once, RESOURCE_EXHAUSTED
    # with grpc-retry-pushback-ms (retry_after_s), instead of queueing: calls in progress and items
    # waiting per kind (texts; images decoding or waiting). An item that waited longer than
    # max_queue_wait_ms (a backstop for callers without a deadline; one with a deadline is never
    # started past it) is refused rather than started: long enough that a stall of the machine
    # is not taken for overload. A stream's batches (bulk indexing) are bounded by the stream
    # instead and wait as long as their deadline allows.
    max_concurrent_rpcs: int = Field(default=256, ge=1)
    max_queued_items: int = Field(default=512, ge=1)
    max_queue_wait_ms: float = Field(default=2000.0, gt=0)
    retry_after_s: float = Field(default=1.0, gt=0)
    max_image_bytes: int = Field(default=10 * MIB, ge=1)
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    # What decoding one image may hold at once (clipsearch.image_limits): about 16 megapixels of RGB.
    max_decoded_bytes: int = Field(default=DEFAULT_MAX_DECODED_BYTES, ge=MIB)
    # A message costs about twice its size while it is handled (gRPC's buffer and the parsed
    # copy): 32 MiB keeps one call near 100 MB. The indexer's batches must fit (its batch size
    # times its images' size).
    max_message_bytes: int = Field(default=32 * MIB, ge=1024)
    # Threads decoding and preprocessing images (inference has its own single thread).
    preprocess_threads: int = Field(default=2, ge=1)
    # When set, every Encoder call needs metadata `x-api-key` with this value
    # (health and reflection stay open for probes and grpcurl).
    api_key: SecretStr | None = None
    torch_threads: int | None = Field(default=None, ge=1)
    # CPUs to run on ("0", "0-3", "0,2"); unset: all. A core of its own keeps the gateway and the
    # clients from piling onto the encoder's (clipsearch/affinity.py, off by default).
    cpus: str | None = None
    # How long in-flight calls may run after SIGTERM before they are cancelled.
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    log_level: str = "INFO"

    @field_validator("cpu_mode")
    @classmethod
    def _known_cpu_mode(cls, value: str) -> str:
        parse_cpu_mode(value)  # CpuModeError (a ValueError) lists the choices
        return value

    @field_validator("text_runtime")
    @classmethod
    def _known_text_runtime(cls, value: str) -> str:
        parse_text_runtime(value)  # TextRuntimeError (a ValueError) lists the choices
        return value

    @field_validator("cpus")
    @classmethod
    def _cpu_list(cls, value: str | None) -> str | None:
        return cpu_setting(value)

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        # ENCODER_API_KEY= (empty, as compose files often leave it) means no key.
        return None if value == "" else value
