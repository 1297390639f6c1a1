"""Encoder service settings, read from the environment (prefix ENCODER_) or flags (`--help`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from clipsearch.acceleration import AUTO, parse_cpu_mode
from clipsearch.affinity import cpu_setting
from clipsearch.bootstrap import ServiceSettings
from clipsearch.image_limits import DEFAULT_MAX_DECODED_BYTES
from clipsearch.onnx_text import parse_text_runtime
from clipsearch.preprocess import DEFAULT_MAX_PIXELS

MIB = 1024 * 1024
# A served name: what calls and health checks spell, so no separators of the ENCODER_MODELS list or of
# the health service names (services/encoder/server.py) in it.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
FINGERPRINT = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ModelSource:
    """One model to serve: the name calls use, and its checkpoint directory or hub id."""

    name: str
    checkpoint: str


def parse_models(value: str) -> list[ModelSource]:
    """`name=DIR,name=DIR` to its entries; ValueError names the first bad or duplicate entry."""
    sources: list[ModelSource] = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue  # a trailing comma
        name, separator, checkpoint = (side.strip() for side in entry.partition("="))
        if not separator or not checkpoint:
            raise ValueError(f"model entry {entry!r} is not NAME=CHECKPOINT")
        if not MODEL_NAME.fullmatch(name):
            raise ValueError(
                f"model name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        if FINGERPRINT.fullmatch(name):
            raise ValueError(f"model name {name!r} looks like a fingerprint; calls could not tell them apart")
        if any(source.name == name for source in sources):
            raise ValueError(f"model name {name!r} is given twice")
        sources.append(ModelSource(name, checkpoint))
    if not sources:
        raise ValueError("no models given: set NAME=CHECKPOINT[,NAME=CHECKPOINT...]")
    return sources


class EncoderSettings(ServiceSettings):
    """The encoder gRPC service: embeds texts, images and sketches with one CLIP checkpoint."""

    model_config = SettingsConfigDict(env_prefix="ENCODER_")

    checkpoint: str = "var/checkpoints/mnist-compact-distilled"
    """A checkpoint directory (save_pretrained layout) or a Hugging Face hub id; the default is the
    demo's model: the compact MNIST model with its text tower distilled."""
    models: str | None = None
    """Several models in one process, NAME=CHECKPOINT,NAME=CHECKPOINT (for example
    mnist=var/checkpoints/mnist-compact-distilled,emoji=var/checkpoints/emoji); calls name the model
    they want. Set, it replaces `checkpoint` (compose always passes one); unset or empty: the one
    `checkpoint`, served under its directory name."""
    models_dir: Path | None = None
    """A models directory: each visible subdirectory holding a checkpoint is served under its
    directory name, beside the ENCODER_MODELS entries (a name given there wins). With it and without
    ENCODER_MODELS, `checkpoint` is served only when set explicitly."""
    reload_s: float = Field(default=10.0, ge=0)
    """How often, in seconds, the local checkpoint directories (ENCODER_MODELS entries, the
    checkpoint, the models directory) are looked at while serving: a new model directory is loaded
    and served, a changed one is loaded and replaces its name's weights, without a restart. 0: never
    (models load at start only). See services/encoder/model_dirs.py for when a directory is loaded."""
    keep_replaced: int = Field(default=1, ge=0, le=8)
    """Weights a reload replaced stay served by their fingerprint, this many per name (a collection
    built by them keeps answering until it is re-indexed, and can be rolled back to); older ones are
    unloaded."""
    host: str = "0.0.0.0"
    port: int = Field(default=50051, ge=0, le=65535)
    """gRPC port; 0 binds any free port (tests), which the server reports."""
    metrics_port: int = Field(default=9101, ge=0, le=65535)
    """Prometheus /metrics side port; 0 binds any free port."""
    metrics_enabled: bool = True
    device: str = "auto"
    """auto, cpu, cuda, cuda:1 ..."""
    dtype: str = "auto"
    cpu_mode: str = AUTO
    """How the model runs on a CPU: auto (bf16 where the CPU does bf16 natively and the model is
    wide enough, else fp32), fp32, bf16, bf16-autocast, int8-dynamic."""
    text_runtime: str = AUTO
    """How texts are embedded on a CPU: auto (the text tower on ONNX Runtime in int8 where it keeps
    the probe's cosine with torch, else torch), torch, onnx, onnx-int8."""
    onnx_cache_dir: Path | None = None
    """Where exported ONNX text towers are cached (default ~/.cache/clipsearch/onnx)."""
    # No batching window by default: requests that queue while the model runs form the next
    # batch, so batches grow with load and a lone request never waits (a 5 ms window cost one
    # text query 6 ms and bought no throughput under load).
    max_batch_size: int = Field(default=64, ge=1)
    """Concurrent requests share a model pass: a batch closes at this many items, or ..."""
    max_wait_ms: float = Field(default=0.0, ge=0)
    """... once its first item has waited this long (0: no window)."""
    batching: bool = True
    max_items_per_request: int = Field(default=256, ge=1)
    max_image_bytes: int = Field(default=10 * MIB, ge=1)
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    max_decoded_bytes: int = Field(default=DEFAULT_MAX_DECODED_BYTES, ge=MIB)
    """What decoding one image may hold at once (clipsearch.image_limits): about 16 megapixels of RGB."""
    max_message_bytes: int = Field(default=32 * MIB, ge=1024)
    """A message costs about twice its size while it is handled (gRPC's buffer and the parsed copy):
    32 MiB keeps one call near 100 MB. The indexer's batches must fit (its batch size times its
    images' size)."""
    max_concurrent_rpcs: int = Field(default=256, ge=1)
    """Overload (clipsearch.overload): calls in progress past which gRPC refuses at once
    (RESOURCE_EXHAUSTED)."""
    max_queued_items: int = Field(default=512, ge=1)
    """Items waiting per model and kind (texts; images decoding or waiting, all models together) past
    which a call is refused at once, RESOURCE_EXHAUSTED with grpc-retry-pushback-ms. A stream's
    batches (bulk indexing) are bounded by the stream instead."""
    max_queue_wait_ms: float = Field(default=2000.0, gt=0)
    """An item that waited longer is refused rather than started: a backstop for callers without a
    deadline (one with a deadline is never started past it), long enough that a stall of the
    machine is not taken for overload."""
    retry_after_s: float = Field(default=1.0, gt=0)
    """What a refused caller is told to wait (grpc-retry-pushback-ms)."""
    preprocess_threads: int = Field(default=2, ge=1)
    """Threads decoding and preprocessing images (inference has its own single thread)."""
    api_key: SecretStr | None = None
    """When set, every Encoder call needs metadata x-api-key with this value (health and
    reflection stay open for probes and grpcurl)."""
    torch_threads: int | None = Field(default=None, ge=1)
    cpus: str | None = None
    """CPUs to run on ("0", "0-3", "0,2"); unset: all. A core of its own keeps the gateway and the
    clients from piling onto the encoder's (clipsearch/affinity.py, off by default)."""
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    """How long in-flight calls may run after SIGTERM before they are cancelled."""

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

    @field_validator("models")
    @classmethod
    def _model_list(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_models(value)  # ValueError names the bad entry
        return value

    def model_sources(self) -> list[ModelSource]:
        """The models to serve, in the order given (the models directory's come on top of these)."""
        if self.models is None and self.models_dir is not None and "checkpoint" not in self.model_fields_set:
            return []
        if self.models is None:
            # Imported here: the settings load (and --help answers) without torch.
            from clipsearch.checkpoint import checkpoint_name

            return [ModelSource(checkpoint_name(self.checkpoint), self.checkpoint)]
        return parse_models(self.models)
