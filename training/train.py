"""The training loop: contrastive fine-tuning or from-scratch training of a CLIP-style model."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch

from clipsearch.checkpoint import load_checkpoint, pick_device
from clipsearch.checkpoint_files import write_dir_atomically
from clipsearch.datasets import LINE_ART_STYLE
from clipsearch.embedder import Embedder, image_features, text_features
from clipsearch.progress import progress_bar
from training.config import TrainConfig
from training.data import (
    PairData,
    augment,
    background_fill,
    load_pairs,
    normalisation,
    sample_captions,
    split,
)
from training.emoji import cross_style_batches, drawing_augment, sample_class_captions
from training.freezing import apply_freezing, text_tower_frozen
from training.losses import clip_loss, concept_bank_loss, image_pair_loss
from training.metrics import class_prototypes, recall_at_k, zero_shot_accuracy
from training.models import COMPACT_CONFIGS, ModelBundle, build_compact
from training.state import Progress, has_state, load_state, save_state

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

    def warm(self, captions: list[str], store: Path | None = None, chunk: int = 256) -> None:
        """Fill the cache ahead of training (a frozen tower only): big batches cost less than per step.

        With `store`, outputs computed by earlier runs are read from that file (kept only for the same
        text tower weights) and the new ones written back: a frozen tower gives the same output
        for a caption every time, and on a busy CPU thousands of captions take minutes.
        """
        tower = self._tower_digest()
        if store is not None and store.is_file():
            with safetensors.safe_open(str(store), framework="pt") as handle:
                meta = handle.metadata() or {}
                if meta.get("text_tower") == tower:
                    pooled = handle.get_tensor("pooled")
                    self.cache.update(zip(json.loads(meta["captions"]), pooled, strict=True))
        before = len(self.cache)
        missing = [c for c in dict.fromkeys(captions) if c not in self.cache]
        for start in range(0, len(missing), chunk):
            self(list(missing[start : start + chunk]))
        if store is not None and len(self.cache) > before:
            store.parent.mkdir(parents=True, exist_ok=True)
            names = list(self.cache)
            partial = store.with_name(f".{store.name}.{os.getpid()}.part")  # concurrent runs each write whole
            safetensors.torch.save_file(
                {"pooled": torch.stack([self.cache[c] for c in names]).cpu().contiguous()},
                str(partial),
                metadata={"text_tower": tower, "captions": json.dumps(names)},
            )
            partial.replace(store)

    def _tower_digest(self) -> str:
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.text_model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()

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


def warmup_cosine_over(budget_used: list[float], warmup: int, min_ratio: float) -> Any:
    """Warmup by steps, then a cosine over the share of the time budget used (`budget_used[0]`)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(budget_used[0], 1.0)
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
    if data.prompt_templates:
        bundle.meta.prompt_templates = data.prompt_templates
    elif data.labels is not None and not data.numerals:
        bundle.meta.prompt_templates = ["a photo of a {}.", "a {}.", "{}"]
    templates = bundle.meta.prompt_templates
    log.info("training on %d pairs, validating on %d", len(train_data), len(val_data) if val_data else 0)
    if config.save_init and not (config.resume and has_state(config.state_dir)):
        _save_bundle(bundle, config.output.with_name(config.output.name + "-init"), Progress(), config)
    cross_style = config.cross_style_weight > 0 and train_data.labels is not None
    concept_bank_weight = (
        config.concept_bank_weight if train_data.class_captions and config.label_aware else 0.0
    )
    if config.cross_style_weight > 0 and not cross_style:
        log.warning("cross_style_weight is set but the data has no labels: no cross-style pairs")
    assert train_data.labels is not None or not cross_style

    trainable = apply_freezing(model, config.freeze, config.unlock_last_n)
    log.info("%d trainable tensors (%s)", len(trainable), config.freeze)
    optimizer = build_optimizer(model, config)
    batches_per_epoch = config.batches_per_epoch or max(len(train_data) // config.batch_size, 1)
    steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accumulation)
    # "time": the cosine runs over the time budget (max_minutes), so a run on a busy machine still
    # ends its schedule when its budget ends; "steps": over epochs x steps per epoch.
    budget_used = [0.0]
    schedule = (
        warmup_cosine(config.warmup_steps, steps_per_epoch * config.epochs, config.min_lr_ratio)
        if config.schedule == "steps"
        else warmup_cosine_over(budget_used, config.warmup_steps, config.min_lr_ratio)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    autocast, scaler = _autocast(device, config)
    generator = torch.Generator().manual_seed(config.seed)
    fill = background_fill(bundle.image_processor, white=data.white_background)
    mean, std = normalisation(bundle.image_processor)
    captions = CaptionEncoder(model, embedder)
    if captions.frozen and train_data.class_captions:
        started = time.perf_counter()
        captions.warm([c for options in train_data.class_captions for c in options], config.text_cache)
        log.info(
            "cached the frozen text tower's outputs for %d captions in %.0f s",
            len(captions.cache),
            time.perf_counter() - started,
        )
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
        pairs = (
            cross_style_batches(
                train_data.labels,  # type: ignore[arg-type]
                train_data.styles,
                config.batch_size // 2,
                batches_per_epoch,
                generator,
                config.line_art_share,
            )
            if cross_style
            else None
        )
        started, cpu_started, losses, seen = time.perf_counter(), time.process_time(), [], 0
        bar = progress_bar(
            range(batches_per_epoch),
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not config.progress,
            leave=False,
        )
        for batch in bar:
            if pairs is not None:
                first, second = pairs[batch]
                indices = torch.cat([first, second])
            else:
                indices = order[batch * config.batch_size : (batch + 1) * config.batch_size]
            pixels = train_data.pixels[indices].to(device)
            if train_data.white_background:
                styles = train_data.styles
                line_art = torch.tensor(
                    [styles is not None and styles[int(i)] == LINE_ART_STYLE for i in indices]
                )
                pixels = drawing_augment(pixels, line_art, config.augment, generator, mean, std)
            pixels = augment(pixels, config.augment, generator, fill)
            texts = sample_captions(train_data, indices, generator)
            labels = (
                train_data.labels[indices].to(device)
                if (config.label_aware and train_data.labels is not None)
                else None
            )
            text_keys = None
            if config.label_aware and train_data.class_captions is not None:
                distinct = {text: key for key, text in enumerate(dict.fromkeys(texts))}
                text_keys = torch.tensor([distinct[text] for text in texts], device=device)
            with autocast():
                image_embeds = image_features(model, pixels)
                loss = clip_loss(image_embeds, captions(texts), model.logit_scale, labels, text_keys)
                if concept_bank_weight > 0:
                    # Every concept's caption (one sampled per concept this step) as a negative, not only
                    # the batch's: a softmax over all the concepts, the image's own concept the target.
                    assert labels is not None
                    assert train_data.class_captions is not None
                    bank = captions(sample_class_captions(train_data.class_captions, generator))
                    bank_loss = concept_bank_loss(image_embeds, bank, model.logit_scale, labels)
                    loss = loss + concept_bank_weight * bank_loss
                if pairs is not None:
                    half = len(indices) // 2
                    pair = image_pair_loss(
                        image_embeds[:half],
                        image_embeds[half:],
                        model.logit_scale,
                        None if labels is None else labels[:half],
                    )
                    loss = loss + config.cross_style_weight * pair
                elif config.image_pair_weight > 0:
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
                if config.max_minutes:
                    used = progress.train_seconds + time.perf_counter() - started
                    budget_used[0] = used / (config.max_minutes * 60)
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
