"""Load a CLIP checkpoint (Hugging Face format, safetensors only) and fingerprint its weights.

A checkpoint is a directory as `save_pretrained` writes it: `config.json`,
`model.safetensors` (or a sharded index), tokenizer files and
`preprocessor_config.json`, plus our `clipsearch.json` sidecar that records the
sketch normalisation the model expects. A hub id is fetched (safetensors only)
when the network allows it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    CLIPModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    VisionTextDualEncoderModel,
)

from clipsearch.checkpoint_files import CONFIG, WEIGHTS, weight_files, weights_fingerprint
from clipsearch.preprocess import SketchNormalization

log = logging.getLogger(__name__)

SIDECAR = "clipsearch.json"
IMAGE_PROCESSOR_CONFIG = "preprocessor_config.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt")
MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "clip": CLIPModel,
    "vision-text-dual-encoder": VisionTextDualEncoderModel,
}
_HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model"]


class CheckpointError(RuntimeError):
    """The checkpoint cannot be used; the message names what is wrong."""


class CheckpointMeta(BaseModel):
    """What clipsearch records beside the Hugging Face files (`clipsearch.json`)."""

    sketch_normalization: SketchNormalization = SketchNormalization.NONE
    # Default prompt templates for zero-shot use, "{}" standing for the label.
    prompt_templates: list[str] = ["a photo of a {}."]
    # Class names the model was trained on, if any (zero-shot defaults).
    class_names: list[str] = []

    @classmethod
    def read(cls, directory: Path) -> CheckpointMeta:
        path = directory / SIDECAR
        if not path.is_file():
            return cls()
        try:
            return cls.model_validate_json(path.read_text())
        except ValueError as exc:
            raise CheckpointError(f"{path} is not valid: {exc}") from None

    def write(self, directory: Path) -> None:
        (directory / SIDECAR).write_text(self.model_dump_json(indent=2) + "\n")


@dataclass
class LoadedCheckpoint:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    image_processor: Any
    meta: CheckpointMeta
    path: Path
    name: str
    fingerprint: str
    device: torch.device
    dtype: torch.dtype

    @property
    def architecture(self) -> str:
        return str(self.model.config.model_type)

    @property
    def embedding_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def image_size(self) -> int:
        return int(vision_config(self.model).image_size)

    @property
    def max_text_tokens(self) -> int:
        return max_text_tokens(self.model, self.tokenizer)

    @property
    def logit_scale(self) -> float:
        scale: torch.Tensor = self.model.logit_scale  # type: ignore[assignment]
        return float(scale.exp().item())


def vision_config(model: PreTrainedModel) -> Any:
    return model.config.vision_config


def max_text_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    positions = int(model.config.text_config.max_position_embeddings)
    tokenizer_limit = int(getattr(tokenizer, "model_max_length", positions) or positions)
    return min(positions, tokenizer_limit)


def pick_device(requested: str | None = None) -> torch.device:
    if requested and requested != "auto":
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, requested: str | None = None) -> torch.dtype:
    """fp32 on CPU; bf16 on GPUs that have it (fp16 otherwise), unless asked for."""
    if requested and requested != "auto":
        try:
            return {
                "float32": torch.float32,
                "fp32": torch.float32,
                "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16,
                "float16": torch.float16,
                "fp16": torch.float16,
            }[requested]
        except KeyError:
            raise CheckpointError(f"unknown dtype {requested!r}: use float32, bfloat16 or float16") from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def check_checkpoint_dir(directory: Path) -> None:
    """Raise CheckpointError naming the first missing or unusable file."""
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    for required in (CONFIG, IMAGE_PROCESSOR_CONFIG):
        if not (directory / required).is_file():
            raise CheckpointError(f"checkpoint {directory} has no {required}")
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(f"checkpoint {directory} has no tokenizer ({' or '.join(TOKENIZER_FILES)})")
    if (directory / "pytorch_model.bin").is_file() and not (directory / WEIGHTS).is_file():
        raise CheckpointError(
            f"checkpoint {directory} has only pytorch_model.bin; clipsearch loads safetensors only "
            "(pickled weights can run code). Convert it with save_pretrained(safe_serialization=True)."
        )
    for path in weight_files(directory):
        if not path.is_file():
            raise CheckpointError(f"checkpoint {directory} has no {path.name}")


def resolve_checkpoint(source: str | Path, cache_dir: Path | None = None) -> Path:
    """A local checkpoint directory, fetching a hub id (safetensors only) when needed."""
    path = Path(source).expanduser()
    if path.exists() or str(source).startswith((".", "/", "~")):
        return path
    if os.environ.get("HF_HUB_OFFLINE", "0") not in {"", "0", "false", "False"}:
        raise CheckpointError(
            f"checkpoint {source!r} is not a local directory, and HF_HUB_OFFLINE is set: "
            f"point the setting at a directory with {CONFIG}, {WEIGHTS}, tokenizer and {IMAGE_PROCESSOR_CONFIG}"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(source), allow_patterns=_HUB_FILES, cache_dir=cache_dir))
    except Exception as exc:  # any hub or network failure ends the same way for the user
        raise CheckpointError(
            f"checkpoint {source!r} is not a local directory and could not be fetched from the "
            f"Hugging Face Hub ({type(exc).__name__}: {exc}); offline, point the setting at a directory "
            f"with {CONFIG}, {WEIGHTS}, tokenizer files and {IMAGE_PROCESSOR_CONFIG}"
        ) from None


def checkpoint_name(source: str | Path) -> str:
    """A checkpoint's human-readable name: its directory's name, or the hub id as given."""
    path = Path(source).expanduser()
    return path.resolve().name if path.exists() else str(source)


def load_checkpoint(
    source: str | Path,
    *,
    device: str | None = None,
    dtype: str | None = None,
    cache_dir: Path | None = None,
) -> LoadedCheckpoint:
    """Load model, tokenizer, (PIL) image processor and sidecar; never unpickles."""
    directory = resolve_checkpoint(source, cache_dir)
    check_checkpoint_dir(directory)
    try:
        config = json.loads((directory / CONFIG).read_text())
    except ValueError as exc:
        raise CheckpointError(f"{directory / CONFIG} is not valid JSON: {exc}") from None
    model_type = config.get("model_type")
    if model_type not in MODEL_CLASSES:
        raise CheckpointError(
            f"{directory / CONFIG} has model_type {model_type!r}; supported: {', '.join(MODEL_CLASSES)}"
        )
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(torch_device, dtype)
    weights = ", ".join(str(p) for p in weight_files(directory))
    try:
        model = MODEL_CLASSES[model_type].from_pretrained(
            directory, use_safetensors=True, local_files_only=True, dtype=torch_dtype
        )
    except Exception as exc:  # safetensors and transformers raise many types for a bad file
        raise CheckpointError(f"cannot load weights {weights}: {type(exc).__name__}: {exc}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        image_processor = AutoImageProcessor.from_pretrained(directory, local_files_only=True, backend="pil")
    except Exception as exc:
        raise CheckpointError(f"cannot load tokenizer or image processor from {directory}: {exc}") from None
    model.to(torch_device)  # type: ignore[arg-type]  # transformers types .to() oddly
    model.eval()
    fingerprint = weights_fingerprint(directory)
    log.info(
        "loaded %s (%s) on %s/%s, fingerprint %s",
        directory,
        model_type,
        torch_device,
        torch_dtype,
        fingerprint[:12],
    )
    return LoadedCheckpoint(
        model=model,
        tokenizer=tokenizer,
        image_processor=image_processor,
        meta=CheckpointMeta.read(directory),
        path=directory,
        name=checkpoint_name(source),
        fingerprint=fingerprint,
        device=torch_device,
        dtype=torch_dtype,
    )
