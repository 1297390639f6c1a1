"""A trained emoji checkpoint served by the real encoder: its sketch normalisation is `line-art`, and a
drawing sent to EmbedSketches is embedded exactly as evaluation embeds the line-art queries."""

from __future__ import annotations

import io
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image, ImageDraw

from clipsearch.checkpoint import load_checkpoint
from clipsearch.embedder import Embedder
from clipsearch.encoder_client import embeddings_to_array
from clipsearch.preprocess import SketchNormalization, decode_sketch
from clipsearch.v1 import encoder_pb2, encoder_pb2_grpc
from services.encoder.server import serve_in_thread
from services.encoder.settings import EncoderSettings
from tests.training.conftest import tiny_config, write_emoji_dir
from training.config import DataConfig
from training.emoji_eval import _embed_images, load_emoji_eval
from training.train import train


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_emoji_checkpoint_serves_sketches_as_evaluation_embeds_them(tmp_path: Path) -> None:
    emoji_dir = write_emoji_dir(tmp_path / "emoji")
    data = DataConfig(kind="emoji", emoji_dir=emoji_dir, val_fraction=0.0)
    result = train(
        tiny_config(tmp_path, data, model="tiny-emoji", epochs=1, batch_size=8, cross_style_weight=1.0)
    )
    checkpoint = load_checkpoint(result.output)
    assert checkpoint.meta.sketch_normalization is SketchNormalization.LINE_ART
    assert "star" in checkpoint.meta.class_names

    # What evaluation embeds for the line-art queries (decoded, sketch-normalised, preprocessed).
    evaluation = load_emoji_eval(data, checkpoint.meta.sketch_normalization)
    line = np.flatnonzero(evaluation.styles == "openmoji-line")
    expected = _embed_images(Embedder.from_checkpoint(checkpoint), evaluation, checkpoint.image_processor)[
        line
    ]
    line_art_files = [
        (emoji_dir / "images" / "openmoji-line" / f"{evaluation.ids[i]}.png").read_bytes() for i in line
    ]
    # And a canvas drawing: a thick pen on a transparent 300x300 canvas.
    canvas = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).ellipse((40, 40, 260, 260), outline=(0, 0, 0, 255), width=14)

    settings = EncoderSettings(
        checkpoint=str(result.output), host="127.0.0.1", port=0, metrics_port=0, text_runtime="torch"
    )
    with serve_in_thread(settings) as running, grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        info = stub.GetModelInfo(encoder_pb2.GetModelInfoRequest())
        assert info.sketch_normalization == "line-art"
        assert info.fingerprint == checkpoint.fingerprint
        reply = stub.EmbedSketches(encoder_pb2.EmbedSketchesRequest(sketches=[*line_art_files, _png(canvas)]))
    served = embeddings_to_array(reply.embeddings)
    np.testing.assert_allclose(served[: len(line)], expected, atol=1e-5)
    # The drawing took the same path: decode_sketch with the checkpoint's normalisation, then the model.
    drawn = decode_sketch(_png(canvas), checkpoint.meta.sketch_normalization)
    assert drawn.size == (72, 72)
    in_process = Embedder.from_checkpoint(checkpoint).embed_images([drawn])
    np.testing.assert_allclose(served[-1:], in_process, atol=1e-5)
