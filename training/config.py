"""Training configuration: one pydantic model, filled from a YAML file and/or the command line."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """The configuration is unusable; the message says which setting and why."""


class FreezeMode(StrEnum):
    ALL = "all"  # train every parameter
    LOCK_TEXT = "lock-text"  # text tower frozen; its projection, the vision tower and temperature train
    LAST_N = "last-n"  # text tower frozen; only the last N vision blocks, projections and temperature train


class DataConfig(BaseModel):
    """Where the training pairs come from: exactly one of MNIST, a caption CSV or class folders."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["mnist", "captions", "folders"] = "mnist"
    mnist_dir: Path | None = None  # default: $MNIST_DIR
    download: bool = False  # fetch MNIST from the official mirrors when missing
    captions_csv: Path | None = None
    image_folder: Path | None = None
    limit: int | None = Field(default=None, ge=1)  # use only the first N examples (smoke runs)
    val_fraction: float = Field(default=0.05, ge=0.0, lt=1.0)
    strict: bool = False  # fail on the first bad row/image instead of skipping it

    @model_validator(mode="after")
    def _source_given(self) -> DataConfig:
        if self.kind == "captions" and self.captions_csv is None:
            raise ValueError("data.kind 'captions' needs data.captions_csv")
        if self.kind == "folders" and self.image_folder is None:
            raise ValueError("data.kind 'folders' needs data.image_folder")
        return self

    def resolved_mnist_dir(self) -> Path:
        if self.mnist_dir is not None:
            return self.mnist_dir
        env = os.environ.get("MNIST_DIR")
        if not env:
            raise ConfigError("MNIST needs --mnist-dir or the MNIST_DIR environment variable")
        return Path(env)


class AugmentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_shift: float = Field(default=0.1, ge=0.0, le=0.5)  # fraction of the image size
    max_rotation_deg: float = Field(default=12.0, ge=0.0, le=180.0)
    scale_range: tuple[float, float] = (0.9, 1.1)
    max_shear: float = Field(default=0.1, ge=0.0, le=1.0)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # A compact config name (training/models.py) to train from scratch, or a checkpoint dir / hub id.
    model: str = "mnist-convnext"
    output: Path = Path("var/checkpoints/mnist-compact")
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()

    epochs: int = Field(default=10, ge=1)
    max_minutes: float | None = Field(default=None, gt=0)  # stop after this much training time
    batch_size: int = Field(default=256, ge=2)
    grad_accumulation: int = Field(default=1, ge=1)
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=0.05, ge=0)
    warmup_steps: int = Field(default=200, ge=0)
    min_lr_ratio: float = Field(default=0.02, ge=0, le=1)
    grad_clip: float | None = Field(default=1.0, gt=0)
    init_temperature: float = Field(default=0.07, gt=0)
    label_aware: bool = True  # same-label pairs in a batch are not negatives
    image_pair_weight: float = Field(default=0.0, ge=0)  # >0 adds an image-image loss (two augmentations)
    freeze: FreezeMode = FreezeMode.ALL
    unlock_last_n: int = Field(default=1, ge=0)  # for freeze=last-n
    patience: int = Field(default=3, ge=1)  # epochs without validation improvement before stopping
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # autocast on CUDA (bf16, or fp16 with a grad scaler); ignored on CPU
    resume: bool = False
    num_threads: int | None = Field(default=None, ge=1)
    progress: bool = True

    @property
    def state_dir(self) -> Path:
        """Where the resumable training state lives: beside the output checkpoint."""
        return self.output.with_name(self.output.name + ".train-state")


def load_config(yaml_path: Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Config from YAML (optional) with command-line overrides; dotted keys reach nested sections."""
    raw: dict[str, Any] = {}
    if yaml_path is not None:
        try:
            loaded = yaml.safe_load(yaml_path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {yaml_path}: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {yaml_path} must be a mapping of settings")
        raw = loaded or {}
    for key, value in overrides.items():
        if value is None:
            continue
        target = raw
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise ConfigError(f"invalid training config: {problems}") from None
