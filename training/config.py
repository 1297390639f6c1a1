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
    """Where the training pairs come from: one of MNIST, a caption CSV, class folders or the emoji."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["mnist", "captions", "folders", "emoji"] = "mnist"
    mnist_dir: Path | None = None  # default: $MNIST_DIR
    download: bool = False  # fetch MNIST (or the emoji) from upstream when missing
    emoji_dir: Path | None = None  # default: $EMOJI_DIR
    emoji_styles: list[str] = ["google", "twitter", "openmoji", "openmoji-line"]  # styles trained on
    holdout_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)  # emoji concepts never trained on
    holdout_seed: int = 0
    captions_csv: Path | None = None
    image_folder: Path | None = None
    limit: int | None = Field(default=None, ge=1)  # use only the first N examples (smoke runs)
    val_fraction: float = Field(default=0.05, ge=0.0, lt=1.0)
    strict: bool = False  # fail on the first bad row/image instead of skipping it
    white_background: bool = False  # caption CSV of pictures on white: augmentation fills with white

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
    # Pictures on white (emoji): colour and stroke changes that keep the background white.
    max_hue_deg: float = Field(default=0.0, ge=0.0, le=180.0)
    saturation: float = Field(default=0.0, ge=0.0, le=1.0)  # chroma scaled by 1 +- this
    strength: float = Field(default=0.0, ge=0.0, le=1.0)  # distance from white scaled by 1 +- this
    greyscale_share: float = Field(default=0.0, ge=0.0, le=1.0)
    stroke: bool = False  # thicken or thin the line art's strokes


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
    # >0: batches pair two styles of each concept, and an image-image loss pulls them together.
    cross_style_weight: float = Field(default=0.0, ge=0)
    # >0: with per-class captions (emoji), a softmax of each image over one caption of every concept.
    concept_bank_weight: float = Field(default=0.0, ge=0)
    line_art_share: float = Field(default=0.5, ge=0, le=1)  # of those pairs: one of the two is the line art
    schedule: Literal["steps", "time"] = "steps"  # the cosine over epochs x steps, or over max_minutes
    batches_per_epoch: int | None = Field(default=None, ge=1)  # default: one pass over the data
    # A frozen text tower's outputs for the training captions, kept between runs (see CaptionEncoder.warm).
    text_cache: Path | None = None
    save_init: bool = False  # also save the untrained model beside the output ("<output>-init")
    freeze: FreezeMode = FreezeMode.ALL
    unlock_last_n: int = Field(default=1, ge=0)  # for freeze=last-n
    patience: int = Field(default=3, ge=1)  # epochs without validation improvement before stopping
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # autocast on CUDA (bf16, or fp16 with a grad scaler); ignored on CPU
    resume: bool = False
    num_threads: int | None = Field(default=None, ge=1)
    progress: bool = True

    @model_validator(mode="after")
    def _budget_for_time_schedule(self) -> TrainConfig:
        if self.schedule == "time" and self.max_minutes is None:
            raise ValueError("schedule 'time' needs max_minutes")
        return self

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
