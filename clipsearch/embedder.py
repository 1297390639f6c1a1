"""L2-normalised text and image embeddings from a CLIP-style model.

One implementation for the encoder service, evaluation and benchmarks; training
calls it on the model it is training, so what is evaluated is what is served.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from clipsearch.acceleration import CpuMode, forward_context, prepare_model, resolve_cpu_mode
from clipsearch.checkpoint import LoadedCheckpoint, max_text_tokens
from clipsearch.onnx_text import PROBE_TEXTS, TextForward, TextRuntime, choose_text_forward
from clipsearch.preprocess import pixel_values

# A token of these tokenizers covers a word or a piece of one; a text of more characters than this
# many per token the model takes cannot fit, and is refused by its length alone, before the
# tokenizer spends time and memory on it (an 8 MB text tokenized whole costs seconds and ~1 GB).
MAX_CHARS_PER_TOKEN = 32


class TextInputError(ValueError):
    """A text cannot be embedded (empty or longer than the model takes)."""


class Embedder:
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: Any,
        device: torch.device | None = None,
        cpu_mode: str | CpuMode = CpuMode.FP32,
    ) -> None:
        self.device = device or next(model.parameters()).device
        # How the model runs on a CPU (clipsearch.acceleration); fp32 unless asked.
        self.cpu_mode = resolve_cpu_mode(cpu_mode, model, self.device)
        # Modes that change weights work on a copy: `model` (maybe being trained) stays as it is.
        self.model = prepare_model(model, self.cpu_mode)
        self._forward_context = forward_context(self.cpu_mode)
        self.tokenizer = tokenizer
        # A fast tokenizer is not safe to call from two threads at once ("Already borrowed"): input
        # checks get their own copy, so they can run on the caller's thread beside an inference call.
        self._check_tokenizer = copy.deepcopy(tokenizer)
        self.image_processor = image_processor
        self.max_text_tokens = max_text_tokens(model, tokenizer)
        self.max_text_chars = self.max_text_tokens * MAX_CHARS_PER_TOKEN
        # Texts through another runtime (clipsearch.onnx_text, set by from_checkpoint) or the model.
        self._text_forward: TextForward | None = None
        self.text_runtime = TextRuntime.TORCH

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: LoadedCheckpoint,
        cpu_mode: str | CpuMode = CpuMode.FP32,
        text_runtime: str | TextRuntime = TextRuntime.TORCH,
        onnx_cache_dir: Path | None = None,
        threads: int | None = None,
    ) -> Embedder:
        """An embedder of the checkpoint; `text_runtime` other than torch exports the text tower
        (clipsearch.onnx_text) and keeps it only where it passes the probe (see there)."""
        embedder = cls(
            checkpoint.model, checkpoint.tokenizer, checkpoint.image_processor, checkpoint.device, cpu_mode
        )
        runtime, forward = choose_text_forward(
            text_runtime,
            device=checkpoint.device,
            model=checkpoint.model,
            features=text_features,
            tokenize=embedder.tokenize,
            fingerprint=checkpoint.fingerprint,
            probe_texts=[*PROBE_TEXTS, *checkpoint_prompts(checkpoint)],
            cache_dir=onnx_cache_dir,
            threads=threads,
        )
        embedder._text_forward, embedder.text_runtime = forward, runtime
        return embedder

    def check_texts(self, texts: Sequence[str]) -> None:
        """Raise TextInputError for the first text that cannot be embedded.

        Bounded (texts over `max_text_chars` are refused before tokenizing) and safe beside a
        running `embed_texts` on another thread; not safe beside itself on another thread.
        """
        for position, text in enumerate(texts):
            if len(text) > self.max_text_chars:
                raise TextInputError(
                    f"text {position} is {len(text):,} characters; this model takes at most "
                    f"{self.max_text_tokens} tokens, which is never more than {self.max_text_chars:,}"
                )
        texts = list(texts)  # each within the length limit: a bounded copy
        lengths = self.token_counts(texts)
        for position, (text, length) in enumerate(zip(texts, lengths, strict=True)):
            if not text.strip():
                raise TextInputError(f"text {position} is empty")
            if length > self.max_text_tokens:
                raise TextInputError(
                    f"text {position} is {length} tokens; this model takes at most {self.max_text_tokens}"
                )

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        encoded = self._check_tokenizer(list(texts), add_special_tokens=True, truncation=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        )
        return {key: batch[key].to(self.device) for key in ("input_ids", "attention_mask")}

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, unit rows."""
        batch = self.tokenize(texts)
        if self._text_forward is not None:
            return self._text_forward(batch)
        with self._forward_context():
            features = text_features(self.model, batch)
        return _unit_rows(features)

    @torch.inference_mode()
    def embed_pixel_values(self, values: torch.Tensor) -> np.ndarray:
        with self._forward_context():
            features = image_features(self.model, values.to(self.device, self._input_dtype()))
        return _unit_rows(features)

    def _input_dtype(self) -> torch.dtype:
        # The patch embedding's weight says what pixels it takes (int8 modes keep it in float32).
        for parameter in self.model.parameters():
            if parameter.is_floating_point():
                return parameter.dtype
        return torch.float32

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Decoded RGB images (already sketch-normalised where needed) to (n, dim) unit rows."""
        return self.embed_pixel_values(pixel_values(images, self.image_processor))


def text_features(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Projected, unnormalised text features (differentiable: training uses it too)."""
    return model.get_text_features(**batch).pooler_output


def image_features(model: Any, values: torch.Tensor) -> torch.Tensor:
    """Projected, unnormalised image features (differentiable: training uses it too)."""
    return model.get_image_features(pixel_values=values).pooler_output


def checkpoint_prompts(checkpoint: LoadedCheckpoint, limit: int = 12) -> list[str]:
    """Texts the checkpoint is meant to read: its prompt templates filled with its class names."""
    meta = checkpoint.meta
    prompts = [template.format(name) for name in meta.class_names for template in meta.prompt_templates[:1]]
    return prompts[:limit]


def _unit_rows(features: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()
