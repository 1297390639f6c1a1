"""The text tower on ONNX Runtime: the encoder's fast path for text queries on a CPU.

A text query is a handful of tokens, where PyTorch eager spends most of its time
between kernels: MiniLM-L6 on one core takes 4.4 ms per query in bf16. The same
tower exported to ONNX and quantised to int8 (dynamic, per-channel weights, VNNI
kernels) takes 0.7 ms, and 0.5 ms per query in batches of 8 (`bench/text_runtime.py`
measures it through `Embedder`). On the demo model the int8 text vectors keep zero-shot accuracy
and precision@10 of all 180 evaluation queries exactly as in fp32.

Runtimes:
- torch: the model as `Embedder` runs it (the reference; GPUs always use it).
- onnx: the same fp32 graph on ONNX Runtime (cosine with torch > 0.9999).
- onnx-int8: Linear weights in int8 with per-channel scales, activations quantised per call.
- auto: onnx-int8 on a CPU, provided it passes the probe below, else torch.

Every ONNX tower is checked when it is loaded: a probe of texts (the checkpoint's
class prompts and free phrasings, alone and in a padded batch) is embedded by
torch and by the session, and the smallest cosine is kept. Under `auto` a tower
below `MIN_PROBE_COSINE` is not used; an explicitly asked runtime is used and
its probe cosine logged. So a checkpoint whose text tower does not survive int8,
or a cache file that is not what it should be, never silently serves worse vectors.

Exported files are cached per checkpoint fingerprint and library versions, and
written to a temporary name first, so a crash mid-export leaves no half file.
They are ONNX protobufs, never pickles.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import uuid
import warnings
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipsearch.acceleration import AUTO, parse_auto_choice

log = logging.getLogger(__name__)

TextBatch = dict[str, torch.Tensor]
# Tokenized texts (input_ids, attention_mask) to (n, dim) float32 unit rows.
TextForward = Callable[[TextBatch], np.ndarray]
Tokenize = Callable[[Sequence[str]], TextBatch]

ONNX_OPSET = 17
# Kept in fp32 under int8: the first layer's feed-forward down-projection (BERT-family names, then
# CLIP's). Its inputs carry the outlier activations that per-tensor activation scales lose
# (Bondarenko et al., 2021); on the demo model this one node takes the probe's smallest cosine
# from 0.974 to 0.990 for about a tenth of int8's gain.
FP32_NODE_PATTERNS = ("/layer.0/output/dense/", "/layers.0/mlp/fc2/")
INPUT_NAMES = ("input_ids", "attention_mask")
# Below this smallest probe cosine with torch, `auto` keeps torch. int8 MiniLM on the demo
# model: 0.990 at worst over the probe (an out-of-domain phrase), and every evaluation metric
# exactly as with torch.
MIN_PROBE_COSINE = 0.98
# Traced at export: two texts of clearly different lengths, so the batch is padded and the
# attention-mask path (data-dependent in HF's masking code) is what the graph records.
EXPORT_EXAMPLE = ("zero", "a photo of a dog, drawn by hand on white paper")
PROBE_TEXTS = (
    "a photo of a dog",
    "show me sevens",
    "a scribbled five",
    "something that looks like the number 3, written quickly",
    "zero",
)


class TextRuntime(StrEnum):
    TORCH = "torch"
    ONNX = "onnx"
    ONNX_INT8 = "onnx-int8"


TEXT_RUNTIME_CHOICES = (AUTO, *(runtime.value for runtime in TextRuntime))


class TextRuntimeError(ValueError):
    """An unknown runtime name, or an ONNX tower that cannot be built or loaded."""


def parse_text_runtime(name: str) -> TextRuntime | None:
    """A TextRuntime, or None for "auto"; TextRuntimeError names the choices."""
    return parse_auto_choice(name, TextRuntime, TextRuntimeError, "text runtime")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "clipsearch" / "onnx"


class OnnxTextTower:
    """An ONNX Runtime session of a text tower: tokenized batch in, unit rows out."""

    def __init__(self, path: Path, threads: int | None = None, *, one_text_per_run: bool = False) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = threads
        # Idle pool threads would otherwise spin between calls, taking cores the gateway and
        # the batch collector need on a small machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for unreadable or invalid files
            raise TextRuntimeError(f"cannot load the ONNX text tower {path}: {exc}") from exc
        self.path = path
        # int8 runs one text per call, without its padding: activation scales are per tensor, so in
        # a padded batch a text's vector would shift with its batch companions (cosine down to 0.976
        # on the demo model); alone, a text always gets the same vector. It costs little: 0.7 ms a
        # text against 0.5 ms in batches of 8. fp32 has no such coupling and runs whole batches.
        self.one_text_per_run = one_text_per_run

    def __call__(self, batch: TextBatch) -> np.ndarray:
        ids = batch["input_ids"].cpu().numpy().astype(np.int64, copy=False)
        mask = batch["attention_mask"].cpu().numpy().astype(np.int64, copy=False)
        if not self.one_text_per_run:
            whole: np.ndarray = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            return whole.astype(np.float32, copy=False)
        rows = []
        for row_ids, row_mask in zip(ids, mask, strict=True):
            tokens = row_mask.astype(bool)  # left or right padding alike
            feeds = {"input_ids": row_ids[None, tokens], "attention_mask": row_mask[None, tokens]}
            rows.append(self.session.run(None, feeds)[0])
        return np.concatenate(rows).astype(np.float32, copy=False)


class _UnitTextFeatures(torch.nn.Module):
    """The graph that is exported: tokens to unit text vectors, as `Embedder` computes them."""

    def __init__(self, model: Any, features: Callable[[Any, TextBatch], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.features = features

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        return torch.nn.functional.normalize(self.features(self.model, batch).float(), dim=-1)


def export_text_tower(
    model: Any,
    features: Callable[[Any, TextBatch], torch.Tensor],
    example: TextBatch,
    path: Path,
    runtime: TextRuntime,
) -> None:
    """Write the text tower of `model` (fp32, on the CPU) to `path` as ONNX, int8 for onnx-int8.

    `example` must be a padded batch of at least two texts, so the traced graph keeps the
    attention-mask path; batch size and length are dynamic axes.
    """
    if runtime is TextRuntime.TORCH:
        raise TextRuntimeError("the torch runtime has nothing to export")
    if bool(example["attention_mask"].all()):
        raise TextRuntimeError("the export example must be a padded batch (texts of different lengths)")
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fp32_temp = temp.with_suffix(".fp32.tmp") if runtime is TextRuntime.ONNX_INT8 else temp
    graph = _UnitTextFeatures(model, features).eval()
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            # The TorchScript exporter (deprecated, present in the pinned torch) needs no extra
            # packages and traces HF text towers as they run; its tracer warnings are expected.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                (example["input_ids"].cpu(), example["attention_mask"].cpu()),
                str(fp32_temp),
                input_names=list(INPUT_NAMES),
                output_names=["text_embeds"],
                dynamic_axes={**axes, "text_embeds": {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        if runtime is TextRuntime.ONNX_INT8:
            import onnx
            from onnxruntime.quantization import QuantType, quantize_dynamic

            keep = [
                node.name
                for node in onnx.load(str(fp32_temp)).graph.node
                if any(pattern in node.name for pattern in FP32_NODE_PATTERNS)
            ]
            logging.disable(logging.INFO)  # the quantiser logs a line per tensor at INFO on the root logger
            try:
                quantize_dynamic(
                    fp32_temp, temp, weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=keep
                )
            finally:
                logging.disable(logging.NOTSET)
        os.replace(temp, path)
    except TextRuntimeError:
        raise
    except Exception as exc:
        raise TextRuntimeError(f"exporting the text tower to ONNX ({runtime.value}) failed: {exc}") from exc
    finally:
        for leftover in {temp, fp32_temp}:
            leftover.unlink(missing_ok=True)


def cached_path(cache_dir: Path, fingerprint: str, runtime: TextRuntime) -> Path:
    """Where a checkpoint's exported tower lives. Library versions and the export recipe are in
    the name: a newer exporter, runtime or recipe makes a new file rather than trusting an old one."""
    import onnxruntime as ort

    recipe = hashlib.sha256(repr((ONNX_OPSET, FP32_NODE_PATTERNS, EXPORT_EXAMPLE)).encode()).hexdigest()[:8]
    versions = f"torch{torch.__version__.split('+')[0]}-ort{ort.__version__}-{recipe}"
    return cache_dir / f"text-{fingerprint[:24]}-{runtime.value}-{versions}.onnx"


def probe_cosine(
    reference: TextForward, candidate: TextForward, tokenize: Tokenize, texts: Sequence[str]
) -> float:
    """Smallest cosine between the two runtimes' vectors, texts alone and as one padded batch."""
    batches = [tokenize([text]) for text in texts] + [tokenize(list(texts))]
    smallest = 1.0
    for batch in batches:
        cosine = np.sum(reference(batch) * candidate(batch), axis=-1)
        smallest = min(smallest, float(cosine.min()))
    return smallest


def choose_text_forward(
    requested: str | TextRuntime,
    *,
    device: torch.device,
    model: Any,
    features: Callable[[Any, TextBatch], torch.Tensor],
    tokenize: Tokenize,
    fingerprint: str,
    probe_texts: Sequence[str] = PROBE_TEXTS,
    cache_dir: Path | None = None,
    threads: int | None = None,
) -> tuple[TextRuntime, TextForward | None]:
    """The runtime to embed texts with, and its forward (None: the caller's torch path).

    `model` is the fp32 model the tower is exported from; torch on it is the probe's reference.
    """
    runtime = requested if isinstance(requested, TextRuntime) else parse_text_runtime(requested)
    if device.type != "cpu" or runtime is TextRuntime.TORCH:
        return TextRuntime.TORCH, None
    asked = runtime
    runtime = runtime or TextRuntime.ONNX_INT8
    texts = list(dict.fromkeys(probe_texts))

    graph = _UnitTextFeatures(model, features).eval()

    @torch.inference_mode()
    def reference(batch: TextBatch) -> np.ndarray:
        return graph(batch["input_ids"], batch["attention_mask"]).cpu().numpy()

    try:
        tower, cosine = load_text_tower(
            model=model,
            features=features,
            tokenize=tokenize,
            reference=reference,
            fingerprint=fingerprint,
            runtime=runtime,
            cache_dir=cache_dir,
            probe_texts=texts,
            threads=threads,
        )
    except (TextRuntimeError, ImportError) as exc:
        if asked is not None:
            raise TextRuntimeError(f"text runtime {runtime.value}: {exc}") from exc
        log.warning("text runtime auto: %s; using torch", exc)
        return TextRuntime.TORCH, None
    if asked is None and cosine < MIN_PROBE_COSINE:
        log.warning(
            "text runtime auto: %s keeps cosine %.4f with torch on the probe texts (below %.2f); using torch",
            runtime.value,
            cosine,
            MIN_PROBE_COSINE,
        )
        return TextRuntime.TORCH, None
    log.info("text runtime %s (%s), probe cosine with torch %.5f", runtime.value, tower.path.name, cosine)
    return runtime, tower


def load_text_tower(
    *,
    model: Any,
    features: Callable[[Any, TextBatch], torch.Tensor],
    tokenize: Tokenize,
    reference: TextForward,
    fingerprint: str,
    runtime: TextRuntime,
    cache_dir: Path | None,
    probe_texts: Sequence[str],
    threads: int | None = None,
) -> tuple[OnnxTextTower, float]:
    """The cached ONNX tower of this checkpoint (exported on first use) and its probe cosine.

    A cache file that fails to load is exported afresh; with no writable cache directory the
    tower is exported to a temporary one (the session keeps the graph in memory).
    """
    directory = _writable(cache_dir or default_cache_dir())
    if directory is None:
        with tempfile.TemporaryDirectory(prefix="clipsearch-onnx-") as temp:
            tower = _load_or_export(
                Path(temp), model, features, tokenize, fingerprint, runtime, probe_texts, threads
            )
    else:
        tower = _load_or_export(
            directory, model, features, tokenize, fingerprint, runtime, probe_texts, threads
        )
    return tower, probe_cosine(reference, tower, tokenize, probe_texts)


def _load_or_export(
    directory: Path,
    model: Any,
    features: Callable[[Any, TextBatch], torch.Tensor],
    tokenize: Tokenize,
    fingerprint: str,
    runtime: TextRuntime,
    probe_texts: Sequence[str],
    threads: int | None,
) -> OnnxTextTower:
    path = cached_path(directory, fingerprint, runtime)
    per_text = runtime is TextRuntime.ONNX_INT8
    if path.is_file():
        try:
            return OnnxTextTower(path, threads, one_text_per_run=per_text)
        except TextRuntimeError as exc:
            log.warning("%s; exporting it again", exc)
    export_text_tower(model, features, tokenize(list(EXPORT_EXAMPLE)), path, runtime)
    return OnnxTextTower(path, threads, one_text_per_run=per_text)


def _writable(directory: Path) -> Path | None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return directory if os.access(directory, os.W_OK) else None
