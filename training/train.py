"""The training loop: contrastive fine-tuning or from-scratch training of a CLIP-style model."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from clipsearch.checkpoint import load_checkpoint, pick_device
from clipsearch.embedder import Embedder, image_features, text_features
from clipsearch.progress import progress_bar
from training.config import TrainConfig
from training.data import PairData, augment, background_fill, load_pairs, sample_captions, split
from training.freezing import apply_freezing, text_tower_frozen
from training.losses import clip_loss, image_pair_loss
from training.metrics import class_prototypes, recall_at_k, zero_shot_accuracy
from training.models import COMPACT_CONFIGS, ModelBundle, build_compact
from training.state import Progress, has_state, load_state, save_state, write_dir_atomically

log = logging.getLogger(__name__)

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp: temperature never below 0.01
HISTORY_FILE = "training.json"


@dataclass
class TrainResult:
    output: Path
    bundle: ModelBundle  # the model as saved in `output` (best validation epoch)
    progress: Progress

    @property
    def samples_per_second(self) -> float:
        return self.progress.samples_seen / max(self.progress.train_seconds, 1e-9)


def load_bundle(config: TrainConfig) -> ModelBundle:
    """A compact model built by name (from scratch), or an existing checkpoint to fine-tune."""
    if config.model in COMPACT_CONFIGS:
        bundle = build_compact(config.model, seed=config.seed)
        with torch.no_grad():
            bundle.model.logit_scale.fill_(math.log(1.0 / config.init_temperature))  # type: ignore[operator]
        return bundle
    checkpoint = load_checkpoint(config.model, device="cpu", dtype="float32")
    return ModelBundle(checkpoint.model, checkpoint.tokenizer, checkpoint.image_processor, checkpoint.meta)


class CaptionEncoder:
    """Caption features for a batch; with the text tower frozen, its outputs are cached per caption.

    A frozen tower gives the same pooled output for a caption every time, so
    only the (trainable) projection runs per step: the same computation as
    `text_features`, which is what the served model runs.
    """

    def __init__(self, model: Any, embedder: Embedder) -> None:
        self.model = model
        self.embedder = embedder
        self.frozen = text_tower_frozen(model)
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        unique = list(dict.fromkeys(captions))
        position = {caption: i for i, caption in enumerate(unique)}
        index = torch.tensor([position[c] for c in captions], device=self.embedder.device)
        if not self.frozen:
            return text_features(self.model, self.embedder.tokenize(unique))[index]
        missing = [c for c in unique if c not in self.cache]
        if missing:
            with torch.no_grad():
                pooled = self.model.text_model(**self.embedder.tokenize(missing)).pooler_output
            self.cache.update(zip(missing, pooled.float(), strict=True))
        pooled_batch = torch.stack([self.cache[c] for c in unique])
        return self.model.text_projection(pooled_batch.to(self.model.text_projection.weight.dtype))[index]


def warmup_cosine(warmup: int, total: int, min_ratio: float) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms, embeddings and the temperature (1-d or scalar)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


def validation_metric(embedder: Embedder, data: PairData, templates: list[str]) -> dict[str, float]:
    """Zero-shot accuracy for labelled data, else caption->image Recall@1."""
    images = np.concatenate(
        [embedder.embed_pixel_values(data.pixels[s : s + 512]) for s in range(0, len(data), 512)]
    )
    if data.labels is not None and data.class_names:
        prototypes = class_prototypes(embedder, data.class_names, templates, data.numerals)
        return {"val_zero_shot_accuracy": zero_shot_accuracy(images, data.labels.numpy(), prototypes)}
    assert data.captions is not None
    texts = embedder.embed_texts(data.captions)
    keys = np.unique(np.array(data.captions), return_inverse=True)[1]
    return {"val_text_to_image_R@1": recall_at_k(texts, images, keys, keys, [1])["R@1"]}


def _autocast(device: torch.device, config: TrainConfig) -> tuple[Any, torch.amp.GradScaler | None]:
    """bf16 autocast on GPUs that have it, fp16 with a grad scaler otherwise; plain fp32 on CPU."""
    if device.type != "cuda" or not config.amp:
        return contextlib.nullcontext, None
    if torch.cuda.is_bf16_supported():
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16), None
    return lambda: torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


def _save_bundle(bundle: ModelBundle, output: Path, progress: Progress, config: TrainConfig) -> None:
    def write(staging: Path) -> None:
        bundle.save(staging)
        record = {"config": json.loads(config.model_dump_json()), "progress": asdict(progress)}
        (staging / HISTORY_FILE).write_text(json.dumps(record, indent=1))

    write_dir_atomically(output, write)


def train(config: TrainConfig, *, stop_after_epoch: int | None = None) -> TrainResult:
    """Train as configured; `stop_after_epoch` ends the run early as an interruption would (tests)."""
    torch.manual_seed(config.seed)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = pick_device(config.device)
    bundle = load_bundle(config)
    model: Any = bundle.model.to(device).float()  # type: ignore[arg-type]
    embedder = Embedder(model, bundle.tokenizer, bundle.image_processor, device)

    data = load_pairs(config.data, bundle.image_processor, "train")
    train_data, val_data = split(data, config.data.val_fraction, config.seed)
    if data.class_names:
        bundle.meta.class_names = data.class_names
    if data.labels is not None and not data.numerals:
        bundle.meta.prompt_templates = ["a photo of a {}.", "a {}.", "{}"]
    templates = bundle.meta.prompt_templates
    log.info("training on %d pairs, validating on %d", len(train_data), len(val_data) if val_data else 0)

    trainable = apply_freezing(model, config.freeze, config.unlock_last_n)
    log.info("%d trainable tensors (%s)", len(trainable), config.freeze)
    optimizer = build_optimizer(model, config)
    batches_per_epoch = max(len(train_data) // config.batch_size, 1)
    steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accumulation)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(config.warmup_steps, steps_per_epoch * config.epochs, config.min_lr_ratio)
    )
    autocast, scaler = _autocast(device, config)
    generator = torch.Generator().manual_seed(config.seed)
    fill = background_fill(bundle.image_processor)
    captions = CaptionEncoder(model, embedder)
    progress = Progress()
    if config.resume and has_state(config.state_dir):
        progress = load_state(config.state_dir, model, optimizer, scheduler, scaler, generator)
        log.info("resumed from %s at epoch %d", config.state_dir, progress.epoch)
    best_weights: dict[str, torch.Tensor] | None = None

    for epoch in range(progress.epoch, config.epochs):
        if progress.epochs_without_improvement >= config.patience:
            break
        model.train()
        if captions.frozen:
            model.text_model.eval()  # no dropout in a frozen tower: its cached outputs stay exact
        order = torch.randperm(len(train_data), generator=generator)
        started, cpu_started, losses, seen = time.perf_counter(), time.process_time(), [], 0
        bar = progress_bar(
            range(batches_per_epoch),
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not config.progress,
            leave=False,
        )
        for batch in bar:
            indices = order[batch * config.batch_size : (batch + 1) * config.batch_size]
            pixels = augment(train_data.pixels[indices].to(device), config.augment, generator, fill)
            texts = sample_captions(train_data, indices, generator)
            labels = (
                train_data.labels[indices].to(device)
                if (config.label_aware and train_data.labels is not None)
                else None
            )
            with autocast():
                image_embeds = image_features(model, pixels)
                loss = clip_loss(image_embeds, captions(texts), model.logit_scale, labels)
                if config.image_pair_weight > 0:
                    second = augment(train_data.pixels[indices].to(device), config.augment, generator, fill)
                    pair = image_pair_loss(
                        image_embeds, image_features(model, second), model.logit_scale, labels
                    )
                    loss = loss + config.image_pair_weight * pair
            scaled = loss / config.grad_accumulation
            (scaler.scale(scaled) if scaler else scaled).backward()
            if (batch + 1) % config.grad_accumulation == 0 or batch + 1 == batches_per_epoch:
                if scaler:
                    scaler.unscale_(optimizer)
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                progress.step += 1
                with torch.no_grad():
                    model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            losses.append(float(loss.detach()))
            seen += len(indices)
            elapsed = time.perf_counter() - started
            bar.set_postfix(loss=f"{losses[-1]:.3f}", samples_per_s=f"{seen / elapsed:.0f}")
            if config.max_minutes and progress.train_seconds + elapsed > config.max_minutes * 60:
                break
        bar.close()
        epoch_seconds = time.perf_counter() - started
        epoch_cpu_seconds = time.process_time() - cpu_started
        progress.train_seconds += epoch_seconds
        progress.cpu_seconds += epoch_cpu_seconds
        progress.samples_seen += seen
        progress.epoch = epoch + 1
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)),
            "samples_per_s": seen / epoch_seconds,
            "seconds": epoch_seconds,
            "cpu_seconds": epoch_cpu_seconds,
            "temperature": float(1 / model.logit_scale.detach().exp()),
        }
        model.eval()
        improved = True
        if val_data is not None:
            metrics = validation_metric(embedder, val_data, templates)
            record.update(metrics)
            value = next(iter(metrics.values()))
            # A tie keeps the later weights: the schedule has decayed further, and a small validation
            # set ties often. Only a strict gain resets the patience count.
            improved = progress.best_metric is None or value >= progress.best_metric
            if progress.best_metric is None or value > progress.best_metric:
                progress.epochs_without_improvement = 0
            else:
                progress.epochs_without_improvement += 1
            if improved:
                progress.best_metric, progress.best_epoch = value, epoch + 1
        progress.history.append(record)
        log.info("epoch %s", json.dumps(record))
        if improved:
            best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            _save_bundle(bundle, config.output, progress, config)
        save_state(config.state_dir, model, optimizer, scheduler, scaler, generator, progress)
        out_of_time = config.max_minutes and progress.train_seconds > config.max_minutes * 60
        if (stop_after_epoch is not None and epoch + 1 >= stop_after_epoch) or out_of_time:
            break
    # Leave in memory what `output` holds: the best validation epoch.
    if best_weights is not None:
        model.load_state_dict(best_weights)
    elif (config.output / "model.safetensors").is_file():  # resumed, and no epoch since improved
        safetensors.torch.load_model(model, str(config.output / "model.safetensors"), device=str(device))
    model.eval()
    return TrainResult(output=config.output, bundle=bundle, progress=progress)
