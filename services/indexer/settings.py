"""Indexer settings: environment variables prefixed INDEXER_, overridden by flags (`--help`)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from clipsearch.bootstrap import ServiceSettings

SourceKind = Literal["mnist", "folder", "csv"]
MnistSplitChoice = Literal["train", "test", "both"]
Mode = Literal["full", "incremental"]


class IndexerSettings(ServiceSettings):
    """Embed a collection with the encoder service and write it to the vector store."""

    model_config = SettingsConfigDict(env_prefix="INDEXER_")
    env_fallbacks: ClassVar[dict[str, str]] = {"mnist_dir": "MNIST_DIR"}

    encoder: str = "localhost:50051"
    """Encoder gRPC target, host:port."""
    encoder_api_key: SecretStr | None = None
    model: str = ""
    """The encoder model that embeds the collection: its served name or fingerprint (empty: the
    encoder's only model). The run pins the fingerprint it resolves to."""
    qdrant_url: str | None = None
    """Qdrant server URL (default: the embedded store in store_path)."""
    qdrant_api_key: SecretStr | None = None
    store_path: Path = Path("var/qdrant")
    """Embedded vector store directory."""
    collection: str = "mnist"
    """The collection alias that readers search."""
    media_dir: Path = Path("var/media")
    """Where images and thumbnails are kept for display."""

    source: SourceKind = "mnist"
    mnist_dir: Path | None = None
    """Directory with the MNIST idx files; unset: $MNIST_DIR (as training and the tests use)."""
    mnist_split: MnistSplitChoice = "test"
    mnist_download: bool = False
    folder: Path | None = None
    """Image folder (one subfolder per class)."""
    csv: Path | None = None
    """Caption CSV: image_path,caption[,label]."""
    limit: int | None = Field(default=None, ge=1)
    """Index only the first N items (smoke runs, benchmarks)."""

    mode: Mode = "full"
    keep_versions: int = Field(default=2, ge=1)
    batch_size: int = Field(default=64, ge=1, le=4096)
    concurrency: int = Field(default=4, ge=1, le=64)
    """Batches in flight to the encoder."""
    deadline_s: float = Field(default=60.0, gt=0)
    """Longest wait for one batch's result."""
    retries: int = Field(default=3, ge=0)
    """Reconnects after UNAVAILABLE or a deadline without progress."""
    fail_on_bad_items: bool = False
    # Scaling out: N workers each embed the items whose id falls in their shard (uuid mod N) into
    # one shared pending version on a Qdrant server; a final run without shards verifies and publishes it.
    shard_count: int = Field(default=1, ge=1)
    """Workers sharing one full index."""
    shard_index: int = Field(default=0, ge=0)
    """This worker's shard, 0 .. shard_count - 1."""
    shard_wait_s: float = Field(default=300.0, gt=0)
    """How long shards > 0 wait for shard 0's version."""
    qdrant_shard_number: int | None = Field(default=None, ge=1)
    """Qdrant cluster layout of each new version (a server only; unset: the server's defaults)."""
    qdrant_replication_factor: int | None = Field(default=None, ge=1)
    qdrant_write_consistency_factor: int | None = Field(default=None, ge=1)
    progress: bool = True
    """A progress bar on a terminal; a line every few seconds in a log file or pipe."""

    @model_validator(mode="after")
    def _shard_in_range(self) -> IndexerSettings:
        if self.shard_index >= self.shard_count:
            raise ValueError(f"shard_index {self.shard_index} is not below shard_count {self.shard_count}")
        return self
