"""Resumable training state in safetensors + JSON (never pickle), written atomically."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from clipsearch.checkpoint_files import write_dir_atomically

LAST = "last"


@dataclass
class Progress:
    """Where training is: the next epoch to run, the optimizer step, and early-stopping bookkeeping."""

    epoch: int = 0
    step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    train_seconds: float = 0.0
    cpu_seconds: float = 0.0  # process CPU time: comparable across busy and idle machines
    samples_seen: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_state(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    generator: torch.Generator,
    progress: Progress,
) -> None:
    """Model, optimizer, scheduler, RNG and progress into `directory/last`, atomically."""

    def write(staging: Path) -> None:
        safetensors.torch.save_model(model, str(staging / "model.safetensors"))
        tensors, optimizer_meta = _optimizer_tensors(optimizer)
        safetensors.torch.save_file(tensors, str(staging / "optimizer.safetensors"))
        rng = {"torch": torch.get_rng_state(), "data": generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        safetensors.torch.save_file(rng, str(staging / "rng.safetensors"))
        scheduler_state = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        meta = {
            "progress": asdict(progress),
            "optimizer": optimizer_meta,
            "scheduler": scheduler_state,
            "scaler": scaler.state_dict() if scaler is not None else None,
        }
        (staging / "state.json").write_text(json.dumps(meta, indent=1))

    write_dir_atomically(directory / LAST, write)


def has_state(directory: Path) -> bool:
    return (directory / LAST / "state.json").is_file()


def load_state(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    generator: torch.Generator,
) -> Progress:
    """Restore everything `save_state` wrote; returns the progress to continue from."""
    last = directory / LAST
    meta = json.loads((last / "state.json").read_text())
    device = next(model.parameters()).device
    safetensors.torch.load_model(model, str(last / "model.safetensors"), device=str(device))
    # On the CPU: load_state_dict moves each tensor where its parameter lives (and keeps "step" as torch wants).
    tensors = safetensors.torch.load_file(str(last / "optimizer.safetensors"))
    optimizer.load_state_dict(_optimizer_state(tensors, meta["optimizer"]))
    scheduler_state = dict(meta["scheduler"])
    scheduler_state["lr_lambdas"] = [None] * len(scheduler.optimizer.param_groups)
    scheduler.load_state_dict(scheduler_state)
    if scaler is not None and meta["scaler"] is not None:
        scaler.load_state_dict(meta["scaler"])
    rng = safetensors.torch.load_file(str(last / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["data"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return Progress(**meta["progress"])
