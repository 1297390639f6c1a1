"""Indexer settings: environment variables prefixed INDEXER_, overridden by flags (`--help`)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from clipsearch.bootstrap import ServiceSettings
from clipsearch.datasets import EMOJI_STYLES

SourceKind = Literal["mnist", "folder", "csv", "emoji"]
MnistSplitChoice = Literal["train", "test", "both"]
Mode = Literal["full", "incremental"]


class IndexerSettings(ServiceSettings):
    """Embed a collection with the encoder service and write it to the vector store."""

    model_config = SettingsConfigDict(env_prefix="INDEXER_")
    env_fallbacks: ClassVar[dict[str, str]] = {"mnist_dir": "MNIST_DIR", "emoji_dir": "EMOJI_DIR"}

    encoder: str = "localhost:50051"
    """Encoder gRPC target, host:port."""
    encoder_api_key: SecretStr | None = None
    model: str = ""
    """The encoder model that embeds the collection: its served name or fingerprint (empty: the
    encoder's only model). The run pins the fingerprint it resolves to."""
    model_wait_s: float = Field(default=0.0, ge=0)
    """How long to wait for the encoder to serve `model` (a model still loading, or the fingerprint
    of a checkpoint the encoder has not picked up yet); 0: fail at once."""
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
    emoji_dir: Path | None = None
    """The emoji collection (emoji.csv, images/<style>/<id>.png); unset: $EMOJI_DIR."""
    emoji_styles: str = ",".join(EMOJI_STYLES)
    """The emoji styles to index, comma-separated: google, twitter, openmoji, openmoji-line."""
    limit: int | None = Field(default=None, ge=1)
    """Index only the first N items (smoke runs, benchmarks)."""

    mode: Mode = "full"
    keep_versions: int = Field(default=2, ge=1)
    """Complete versions kept, the live one included (the others are there to roll back to)."""
    gate: bool = True
    """A full index with another model than the live version's is published only when it evaluates
    at least as well (the query set below); a worse one is dropped. --no-gate publishes anyway."""
    eval_queries: int = Field(default=100, ge=0, le=10_000)
    """Queries in the evaluation set built from the source (0: no evaluation)."""
    eval_k: int = Field(default=10, ge=1, le=100)
    """The evaluation looks at each query's top k."""
    rollback: bool = False
    """Point the collection back at the version published before the live one, and exit."""
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

    @field_validator("emoji_styles")
    @classmethod
    def _known_styles(cls, value: str) -> str:
        styles = [style.strip() for style in value.split(",") if style.strip()]
        unknown = [style for style in styles if style not in EMOJI_STYLES]
        if unknown or not styles:
            raise ValueError(f"emoji styles {unknown or value!r}: choose from {', '.join(EMOJI_STYLES)}")
        return ",".join(dict.fromkeys(styles))

    def styles(self) -> list[str]:
        """The emoji styles asked for, in the collection's order."""
        asked = self.emoji_styles.split(",")
        return [style for style in EMOJI_STYLES if style in asked]

    @model_validator(mode="after")
    def _shard_in_range(self) -> IndexerSettings:
        if self.shard_index >= self.shard_count:
            raise ValueError(f"shard_index {self.shard_index} is not below shard_count {self.shard_count}")
        return self
