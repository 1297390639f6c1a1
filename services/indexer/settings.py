"""Indexer settings: environment variables prefixed INDEXER_, overridable by CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SourceKind = Literal["mnist", "folder", "csv"]
MnistSplitChoice = Literal["train", "test", "both"]
Mode = Literal["full", "incremental"]


class IndexerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INDEXER_", populate_by_name=True, extra="ignore")

    encoder: str = "localhost:50051"
    encoder_api_key: SecretStr | None = None
    # The encoder model that embeds this collection: its served name or fingerprint; empty: the
    # encoder's only model. The run pins the fingerprint it resolves to.
    model: str = ""
    qdrant_url: str | None = None
    qdrant_api_key: SecretStr | None = None
    store_path: Path = Path("var/qdrant")
    collection: str = "mnist"  # the alias readers search
    media_dir: Path = Path("var/media")

    source: SourceKind = "mnist"
    # INDEXER_MNIST_DIR, or the MNIST_DIR that training and the tests use.
    mnist_dir: Path | None = Field(
        default=None, validation_alias=AliasChoices("INDEXER_MNIST_DIR", "MNIST_DIR")
    )
    mnist_split: MnistSplitChoice = "test"
    mnist_download: bool = False
    folder: Path | None = None
    csv: Path | None = None
    limit: int | None = Field(default=None, ge=1)  # index only the first N items (smoke runs, benchmarks)

    mode: Mode = "full"
    keep_versions: int = Field(default=2, ge=1)
    batch_size: int = Field(default=64, ge=1, le=4096)
    concurrency: int = Field(default=4, ge=1, le=64)  # batches in flight to the encoder
    deadline_s: float = Field(default=60.0, gt=0)  # longest wait for one batch's result
    retries: int = Field(default=3, ge=0)  # reconnects after UNAVAILABLE/deadline without progress
    fail_on_bad_items: bool = False
    # Scaling out: N workers each embed the items whose id falls in their shard (uuid mod N) into
    # one shared pending version on a Qdrant server; a final run without shards verifies and publishes it.
    shard_count: int = Field(default=1, ge=1)
    shard_index: int = Field(default=0, ge=0)
    shard_wait_s: float = Field(default=300.0, gt=0)  # how long shards > 0 wait for shard 0's version
    # Qdrant cluster layout of each new version (a server only; unset: the server's defaults).
    qdrant_shard_number: int | None = Field(default=None, ge=1)
    qdrant_replication_factor: int | None = Field(default=None, ge=1)
    qdrant_write_consistency_factor: int | None = Field(default=None, ge=1)
    progress: bool = True

    @model_validator(mode="after")
    def _shard_in_range(self) -> IndexerSettings:
        if self.shard_index >= self.shard_count:
            raise ValueError(f"shard_index {self.shard_index} is not below shard_count {self.shard_count}")
        return self
