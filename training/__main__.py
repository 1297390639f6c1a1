"""`python -m training train|distill-text ...`: train or fine-tune a CLIP model, or distil its text
tower into a shallower, faster one (see `--help`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from clipsearch.checkpoint import CheckpointError
from clipsearch.datasets import EMOJI_STYLES, DatasetError, export_caption_csv, heldout_concepts, read_emoji
from clipsearch.logs import configure_logging
from training.config import ConfigError, FreezeMode, load_config
from training.distill import DistillConfig, DistillError, distill_checkpoint


def parser(prog: str = "python -m training") -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog=prog, description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a compact CLIP from scratch or fine-tune a checkpoint")
    train.add_argument("--config", type=Path, help="YAML file with settings (command-line flags win)")
    train.add_argument(
        "--model",
        help="compact config name (tiny, mnist-scratch, mnist-minilm, mnist-convnext) or checkpoint",
    )
    train.add_argument("--output", type=Path, help="checkpoint directory to write")
    source = train.add_mutually_exclusive_group()
    source.add_argument("--mnist-dir", type=Path, help="MNIST idx files (default: $MNIST_DIR)")
    source.add_argument("--captions", type=Path, help="CSV of image_path,caption[,label]")
    source.add_argument("--image-folder", type=Path, help="folder with one subfolder per class")
    source.add_argument("--emoji-dir", type=Path, help="the emoji collection (emoji.csv, images/<style>/)")
    train.add_argument("--download-mnist", action="store_true", default=None, help="fetch MNIST if missing")
    train.add_argument(
        "--download-emoji",
        action="store_true",
        default=None,
        help="build the emoji collection in --emoji-dir from the pinned upstream packages if missing",
    )
    train.add_argument("--emoji-styles", help="comma-separated styles to train on (default: all four)")
    train.add_argument("--holdout-fraction", type=float, help="emoji concepts never trained on (seeded)")
    train.add_argument("--cross-style-weight", type=float, help="weight of the cross-style image-image loss")
    train.add_argument("--batches-per-epoch", type=int, help="batches per epoch (default: one pass)")
    train.add_argument(
        "--save-init", action="store_true", default=None, help="also save the untrained model as OUTPUT-init"
    )
    train.add_argument("--limit", type=int, help="use only the first N examples")
    train.add_argument("--val-fraction", type=float)
    train.add_argument(
        "--strict", action="store_true", default=None, help="fail on bad data instead of skipping"
    )
    train.add_argument("--epochs", type=int)
    train.add_argument("--max-minutes", type=float, help="stop after this many minutes of training")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--grad-accumulation", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--weight-decay", type=float)
    train.add_argument("--warmup-steps", type=int)
    train.add_argument("--freeze", choices=[mode.value for mode in FreezeMode])
    train.add_argument("--unlock-last-n", type=int, help="vision blocks to train with --freeze last-n")
    train.add_argument("--image-pair-weight", type=float, help="weight of the image-image loss (0: off)")
    train.add_argument("--no-label-aware", dest="label_aware", action="store_false", default=None)
    train.add_argument("--no-augment", dest="augment", action="store_false", default=None)
    train.add_argument("--patience", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    train.add_argument("--threads", type=int, help="torch CPU threads")
    train.add_argument(
        "--resume", action="store_true", default=None, help="continue from the last epoch saved"
    )
    train.add_argument("--no-progress", dest="progress", action="store_false", default=None)

    distill = commands.add_parser(
        "distill-text", help="distil a checkpoint's text tower into fewer layers (faster text queries)"
    )
    distill.add_argument("checkpoint", help="the teacher checkpoint directory (or hub id)")
    distill.add_argument("--output", type=Path, required=True, help="checkpoint directory to write")
    distill.add_argument("--layers", type=int, help="text layers to keep (default: half, rounded up)")
    distill.add_argument("--steps", type=int, default=DistillConfig.steps)
    distill.add_argument("--batch-size", type=int, default=DistillConfig.batch_size)
    distill.add_argument("--lr", type=float, default=DistillConfig.lr)
    distill.add_argument("--seed", type=int, default=DistillConfig.seed)
    distill.add_argument("--corpus", type=Path, help="extra text to distil on, one sentence per line")
    distill.add_argument("--device", help="auto, cpu, cuda ...")
    distill.add_argument("--threads", type=int, help="torch CPU threads")
    distill.add_argument("--no-progress", dest="progress", action="store_false")

    export = commands.add_parser(
        "export-csv", help="write the emoji collection as a seed-style image_path,caption[,label] CSV"
    )
    export.add_argument("--emoji-dir", type=Path, help="the emoji collection (default: $EMOJI_DIR)")
    export.add_argument("--output", type=Path, required=True, help="the CSV to write")
    export.add_argument("--styles", help="comma-separated styles (default: all four)")
    export.add_argument(
        "--caption", choices=["label", "tags"], default="label", help="label, or label and tags"
    )
    export.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.0,
        help="leave out these held-out concepts (as training does)",
    )
    export.add_argument("--holdout-seed", type=int, default=0)
    return root


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    kind = "captions" if args.captions else "folders" if args.image_folder else None
    if args.mnist_dir:
        kind = "mnist"
    if args.emoji_dir:
        kind = "emoji"
    download = args.download_mnist or args.download_emoji
    return {
        "model": args.model,
        "output": args.output,
        "data.kind": kind,
        "data.mnist_dir": args.mnist_dir,
        "data.captions_csv": args.captions,
        "data.image_folder": args.image_folder,
        "data.emoji_dir": args.emoji_dir,
        "data.emoji_styles": args.emoji_styles.split(",") if args.emoji_styles else None,
        "data.holdout_fraction": args.holdout_fraction,
        "data.download": download,
        "data.limit": args.limit,
        "data.val_fraction": args.val_fraction,
        "data.strict": args.strict,
        "augment.enabled": args.augment,
        "epochs": args.epochs,
        "max_minutes": args.max_minutes,
        "batch_size": args.batch_size,
        "grad_accumulation": args.grad_accumulation,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "warmup_steps": args.warmup_steps,
        "freeze": args.freeze,
        "unlock_last_n": args.unlock_last_n,
        "image_pair_weight": args.image_pair_weight,
        "cross_style_weight": args.cross_style_weight,
        "batches_per_epoch": args.batches_per_epoch,
        "save_init": args.save_init,
        "label_aware": args.label_aware,
        "patience": args.patience,
        "seed": args.seed,
        "device": args.device,
        "num_threads": args.threads,
        "resume": args.resume,
        "progress": args.progress,
    }


def main(argv: Sequence[str] | None = None, prog: str = "python -m training") -> int:
    args = parser(prog).parse_args(argv)
    configure_logging()
    if args.command == "distill-text":
        return distill(args)
    if args.command == "export-csv":
        return export_csv(args)
    from training.train import train

    try:
        config = load_config(args.config, overrides(args))
        result = train(config)
    except (ConfigError, DatasetError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    progress = result.progress
    print(
        f"wrote {result.output}: {progress.epoch} epochs, best {progress.best_metric} at epoch "
        f"{progress.best_epoch}, {progress.train_seconds:.0f} s training, {result.samples_per_second:.0f} samples/s"
    )
    return 0


def export_csv(args: argparse.Namespace) -> int:
    styles = args.styles.split(",") if args.styles else list(EMOJI_STYLES)
    try:
        collection = read_emoji(args.emoji_dir, styles=styles)
        held = heldout_concepts([c.id for c in collection.concepts], args.holdout_fraction, args.holdout_seed)
        collection.items = [item for item in collection.items if item.id not in held]
        rows = export_caption_csv(collection, args.output, caption=args.caption)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {rows} rows ({len(collection.problems)} problems skipped)")
    return 0


def distill(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    config = DistillConfig(
        layers=args.layers,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        corpus=args.corpus,
        progress=args.progress,
    )
    try:
        result = distill_checkpoint(args.checkpoint, args.output, config, args.device)
    except (DistillError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fit = f"cosine with the teacher on generated text {result.cosine_generated_mean:.4f}"
    if result.cosine_free_form_mean is not None:
        fit += (
            f", on the free-form queries mean {result.cosine_free_form_mean:.4f}"
            f" min {result.cosine_free_form_min:.4f}"
        )
    print(
        f"wrote {result.output}: text layers {result.kept_layers} of {result.teacher_layers}, "
        f"{result.steps} steps in {result.seconds:.0f} s; {fit}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
