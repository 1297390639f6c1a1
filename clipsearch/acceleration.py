"""CPU inference modes: how a model is run for embeddings on a CPU.

One place for the CPU speed-ups `Embedder` can apply. Each mode names a way of
running the same weights, and the cosine it keeps with the fp32 embedding on
random ViT-B/32-shaped and compact models (`bench/encoder.py --cpu-modes`
measures speed and cosine; `tests/test_acceleration.py` checks the cosine):

- fp32: plain float32, the reference.
- bf16: weights converted to bfloat16. On 2 AVX512-BF16 cores (bench, random
  weights): ViT-B/32 images 3.1-3.3x fp32, texts 2.9x; compact MNIST images
  1.5-2x; the 32-wide test model 0.75x. Cosine > 0.9999. Slower than fp32
  where bf16 is emulated. Runs a converted copy, never the caller's model.
- bf16-autocast: fp32 weights, matrix products in bfloat16 under
  `torch.autocast`. Same accuracy, a little slower than bf16 (weights are cast
  on every call); the model is not copied, so training can share it.
- int8-dynamic: the vision tower's Linear layers quantised to int8 with
  dynamic activation scales (`quantize_dynamic`), text tower as it is: the
  fastest for images (ViT-B/32 4.5x fp32) but cosine only ~0.9997 on random
  weights, and int8 is more fragile with trained weights' outliers. Whole-model int8
  took a pretrained MiniLM text tower down to cosine 0.95, hence images only.

"auto" resolves to bf16 where the CPU does bf16 natively and the model is wide
enough to gain from it, else fp32 (see `resolve_cpu_mode`).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar

import torch

# Narrower models (the 32-wide test model) have matrices too small for bf16 kernels to pay;
# the compact MNIST models (192 wide) and ViT-B/32 (768) gain 1.5-3.3x on images.
MIN_BF16_WIDTH = 128

ModelT = TypeVar("ModelT", bound=torch.nn.Module)


class CpuMode(StrEnum):
    FP32 = "fp32"
    BF16_AUTOCAST = "bf16-autocast"
    BF16 = "bf16"
    INT8_DYNAMIC = "int8-dynamic"


# Smallest cosine with the fp32 embedding each mode promises (tests check it).
MIN_COSINE: dict[CpuMode, float] = {
    CpuMode.FP32: 0.999999,
    CpuMode.BF16_AUTOCAST: 0.999,
    CpuMode.BF16: 0.999,
    CpuMode.INT8_DYNAMIC: 0.999,  # images; texts are fp32
}

AUTO = "auto"
CPU_MODE_CHOICES = (AUTO, *(mode.value for mode in CpuMode))

ChoiceT = TypeVar("ChoiceT", bound=StrEnum)


class CpuModeError(ValueError):
    """An unknown CPU mode name."""


def parse_auto_choice(
    name: str, choices: type[ChoiceT], error: type[ValueError], what: str
) -> ChoiceT | None:
    """The member of `choices` named `name`, or None for "auto"; `error` names the choices.

    One parser for the speed settings that take "auto" (CPU mode here, text runtime in onnx_text).
    """
    if name == AUTO:
        return None
    try:
        return choices(name)
    except ValueError:
        listed = ", ".join((AUTO, *(choice.value for choice in choices)))
        raise error(f"unknown {what} {name!r}: use one of {listed}") from None


def parse_cpu_mode(name: str) -> CpuMode | None:
    """A CpuMode, or None for "auto"; CpuModeError names the choices."""
    return parse_auto_choice(name, CpuMode, CpuModeError, "CPU mode")


def cpu_has_native_bf16() -> bool:
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def model_width(model: torch.nn.Module) -> int:
    """The widest tower's hidden size (0 when the config does not say)."""
    config: Any = getattr(model, "config", None)
    widths = [
        int(getattr(getattr(config, tower, None), "hidden_size", 0) or 0)
        for tower in ("vision_config", "text_config")
    ]
    return max(widths, default=0)


def resolve_cpu_mode(name: str | CpuMode, model: torch.nn.Module, device: torch.device) -> CpuMode:
    """The mode to run: an explicit mode as asked; "auto" picks the fastest measured safe mode.

    Off the CPU the modes do not apply (the checkpoint dtype governs GPUs): always fp32 there.
    """
    mode = name if isinstance(name, CpuMode) else parse_cpu_mode(name)
    if device.type != "cpu":
        return CpuMode.FP32
    if mode is not None:
        return mode
    if cpu_has_native_bf16() and model_width(model) >= MIN_BF16_WIDTH:
        return CpuMode.BF16
    return CpuMode.FP32


def prepare_model(model: ModelT, mode: CpuMode) -> ModelT:
    """The model to run in `mode`: the same object where the mode keeps weights as they are, else a copy."""
    if mode is CpuMode.BF16:
        if all(parameter.dtype == torch.bfloat16 for parameter in model.parameters()):
            return model  # loaded in bf16 already (ENCODER_DTYPE=bf16)
        return copy.deepcopy(model).to(torch.bfloat16).eval()
    if mode is CpuMode.INT8_DYNAMIC:
        if not isinstance(getattr(model, "vision_model", None), torch.nn.Module):
            raise CpuModeError(f"{mode.value} quantises the vision tower; {type(model).__name__} has none")
        quantized = copy.deepcopy(model).float().eval()
        with warnings.catch_warnings():
            # torch.ao eager quantisation is deprecated in favour of torchao, not yet removed.
            warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
            quantized.vision_model = torch.ao.quantization.quantize_dynamic(
                quantized.vision_model, {torch.nn.Linear}, dtype=torch.qint8
            )
        return quantized
    return model


def forward_context(mode: CpuMode) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A factory of the context the forward pass runs in for `mode`."""
    if mode is CpuMode.BF16_AUTOCAST:
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext
