"""End-to-end: tiny training and evaluation on generated data, resume, and trained == served."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from clipsearch.checkpoint import load_checkpoint
from clipsearch.embedder import Embedder, text_features
from training.__main__ import main as train_main
from training.config import DataConfig, FreezeMode, load_config
from training.evaluate import main as evaluate_main
from training.evaluate import run as evaluate_run
from training.freezing import apply_freezing
from training.models import build_compact
from training.state import LAST
from training.train import CaptionEncoder, train

from .conftest import tiny_config


def _check_evaluation(checkpoint: Path, data: DataConfig, labelled: bool) -> dict[str, object]:
    report = evaluate_run(str(checkpoint), str(checkpoint), data, None)
    metrics = report["checkpoint"]
    assert isinstance(metrics, dict)
    for direction in ("text_to_image", "image_to_text"):
        assert set(metrics[direction]) == {"R@1", "R@5", "R@10"}
        assert all(0.0 <= v <= 1.0 for v in metrics[direction].values())
    assert ("zero_shot_accuracy" in metrics) is labelled
    assert json.loads((checkpoint / "eval" / "metrics.json").read_text())["checkpoint"] == metrics
    for picture in report["pictures"]:
        assert (checkpoint / "eval" / picture).stat().st_size > 1000
    assert "| metric |" in (checkpoint / "README.md").read_text()
    return metrics


@pytest.mark.slow
def test_caption_csv_end_to_end(tmp_path: Path, caption_csv: Path) -> None:
    data = DataConfig(kind="captions", captions_csv=caption_csv, val_fraction=0.2)
    result = train(tiny_config(tmp_path, data, epochs=3))
    history = result.progress.history
    assert len(history) == 3
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert "val_text_to_image_R@1" in history[0]
    _check_evaluation(result.output, data, labelled=False)


@pytest.mark.slow
def test_class_folders_end_to_end(tmp_path: Path, class_folder: Path) -> None:
    data = DataConfig(kind="folders", image_folder=class_folder, val_fraction=0.25)
    result = train(tiny_config(tmp_path, data))
    assert load_checkpoint(result.output).meta.class_names == ["circle", "square"]
    metrics = _check_evaluation(result.output, data, labelled=True)
    assert metrics["images"] == 24


@pytest.mark.slow
def test_mnist_idx_end_to_end_with_cli(tmp_path: Path, mnist_idx_dir: Path) -> None:
    output = tmp_path / "mnist-tiny"
    code = train_main(
        [
            "train",
            "--model",
            "tiny",
            "--output",
            str(output),
            "--mnist-dir",
            str(mnist_idx_dir),
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--threads",
            "1",
            "--no-progress",
            "--image-pair-weight",
            "0.5",
            "--warmup-steps",
            "2",
        ]
    )
    assert code == 0
    assert evaluate_main([str(output), "--baseline", str(output), "--mnist-dir", str(mnist_idx_dir)]) == 0
    metrics = json.loads((output / "eval" / "metrics.json").read_text())
    precision = metrics["checkpoint"]["precision_at_10"]
    assert set(precision) >= {"all", "template", "free_form", "per_class"}
    assert len(precision["per_class"]) == 10
    assert metrics["baseline"]["zero_shot_accuracy"] == metrics["checkpoint"]["zero_shot_accuracy"]
    assert {"embedding_map.png", "similarity_heatmap.png", "retrieval_grid.png"} == set(metrics["pictures"])


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["tiny", "tiny-convnext"])
def test_saved_checkpoint_embeds_like_the_training_process(
    tmp_path: Path, mnist_idx_dir: Path, model_name: str
) -> None:
    config = tiny_config(tmp_path, DataConfig(mnist_dir=mnist_idx_dir), epochs=1, model=model_name)
    result = train(config)
    in_process = Embedder(result.bundle.model, result.bundle.tokenizer, result.bundle.image_processor)
    served = Embedder.from_checkpoint(load_checkpoint(result.output))
    texts = ["a handwritten digit seven", "show me sevens", "3"]
    np.testing.assert_allclose(in_process.embed_texts(texts), served.embed_texts(texts), atol=1e-6)
    pixels = torch.randn(5, 3, 28, 28)
    np.testing.assert_allclose(
        in_process.embed_pixel_values(pixels), served.embed_pixel_values(pixels), atol=1e-6
    )


def test_resume_matches_an_uninterrupted_run(tmp_path: Path, mnist_idx_dir: Path) -> None:
    data = DataConfig(mnist_dir=mnist_idx_dir)
    straight = train(tiny_config(tmp_path / "a", data, epochs=3, patience=5))
    interrupted = tiny_config(tmp_path / "b", data, epochs=3, patience=5)
    first = train(interrupted, stop_after_epoch=1)
    assert first.progress.epoch == 1
    assert (interrupted.state_dir / LAST / "optimizer.safetensors").is_file()
    resumed = train(interrupted.model_copy(update={"resume": True}))
    assert resumed.progress.epoch == 3
    assert [h["train_loss"] for h in resumed.progress.history] == [
        h["train_loss"] for h in straight.progress.history
    ]
    for name, value in straight.bundle.model.state_dict().items():
        assert torch.equal(value, resumed.bundle.model.state_dict()[name]), name
    a = safetensors.torch.load_file(str(straight.output / "model.safetensors"))
    b = safetensors.torch.load_file(str(resumed.output / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_model(tmp_path: Path, mnist_idx_dir: Path) -> None:
    data = DataConfig(mnist_dir=mnist_idx_dir)
    one = train(tiny_config(tmp_path / "a", data, epochs=1))
    two = train(tiny_config(tmp_path / "b", data, epochs=1))
    assert one.progress.history[0]["train_loss"] == two.progress.history[0]["train_loss"]


def test_cached_caption_features_equal_text_features() -> None:
    bundle = build_compact("tiny", seed=0)
    apply_freezing(bundle.model, FreezeMode.LOCK_TEXT)
    embedder = Embedder(bundle.model, bundle.tokenizer, bundle.image_processor)
    encoder = CaptionEncoder(bundle.model, embedder)
    assert encoder.frozen
    captions = ["a two", "the number 2", "a two", "sevens"]
    encoder(captions[:2])  # fills the cache for two of them
    cached = encoder(captions)
    direct = text_features(bundle.model, embedder.tokenize(captions))
    torch.testing.assert_close(cached, direct)


def test_yaml_config_with_command_line_override(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("model: tiny\nepochs: 4\ndata:\n  kind: folders\n  image_folder: /data/pets\n")
    config = load_config(path, {"epochs": 7, "data.val_fraction": 0.1})
    assert (config.model, config.epochs, config.data.val_fraction) == ("tiny", 7, 0.1)
    assert config.data.image_folder == Path("/data/pets")


def test_user_mistakes_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["train", "--model", "tiny", "--mnist-dir", str(tmp_path), "--no-progress"]) == 2
    assert "not found" in capsys.readouterr().err
    assert train_main(["train", "--model", "tiny", "--epochs", "0", "--mnist-dir", str(tmp_path)]) == 2
    assert "epochs" in capsys.readouterr().err
    assert train_main(["train", "--model", str(tmp_path / "nope"), "--mnist-dir", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert evaluate_main([str(tmp_path / "nope")]) == 2


def test_fine_tunes_an_existing_checkpoint_with_last_n_unlocked(
    tmp_path: Path, tiny_checkpoint: Path, mnist_idx_dir: Path
) -> None:
    config = tiny_config(
        tmp_path,
        DataConfig(mnist_dir=mnist_idx_dir),
        model=str(tiny_checkpoint),
        epochs=1,
        freeze=FreezeMode.LAST_N,
        unlock_last_n=1,
        grad_accumulation=2,
    )
    result = train(config)
    before = safetensors.torch.load_file(str(tiny_checkpoint / "model.safetensors"))
    after = safetensors.torch.load_file(str(result.output / "model.safetensors"))
    assert torch.equal(
        before["text_model.embeddings.token_embedding.weight"],
        after["text_model.embeddings.token_embedding.weight"],
    )
    assert not torch.equal(before["visual_projection.weight"], after["visual_projection.weight"])
    assert load_checkpoint(result.output).meta.sketch_normalization.value == "mnist"


def test_early_stopping_ends_when_validation_stops_improving(tmp_path: Path, mnist_idx_dir: Path) -> None:
    # A learning rate this small leaves the validation metric where it was: no improvement after epoch 1.
    config = tiny_config(tmp_path, DataConfig(mnist_dir=mnist_idx_dir), epochs=6, patience=2, lr=1e-12)
    result = train(config)
    assert result.progress.epoch == 3
    # The metric ties every epoch: patience counts only strict gains, and the latest tie is kept.
    assert result.progress.best_epoch == 3
