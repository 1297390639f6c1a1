"""Distil a checkpoint's text tower into a shallower copy of itself: a query encoder a few times cheaper.

    python -m training distill-text CHECKPOINT --output DIR [--layers 2] [--steps 500]

Every search query runs the text tower on the request path, so its depth is paid
per query (bench/text_runtime.py), while the vision tower runs at indexing time.
The student keeps evenly spaced transformer layers of the teacher, first and last
included (the demo keeps 0 and 5 of MiniLM's 6: int8 text queries run 2.4x faster),
with the teacher's embeddings, pooler and projection, and learns to reproduce
the teacher's text embeddings: the pooled output (MSE) and the projected unit
vector (cosine). It learns them on text generated from the checkpoint's own
classes, so that phrasings it never saw still land where the teacher's do:
the training caption templates filled with class names, numerals and plurals or
with random words, and random word sequences from the tokenizer's vocabulary with
a class mentioned in most of them (plus any lines of `--corpus`, e.g. captions).
The free-form evaluation phrasings (training/queries.py) are never trained on;
the student's cosine with the teacher on them is measured at the end.

The vision tower and projection are the teacher's, unchanged, so image vectors
indexed with the teacher stay comparable (the fingerprint changes all the same).
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clipsearch.checkpoint import LoadedCheckpoint, load_checkpoint
from clipsearch.checkpoint_files import write_dir_atomically
from clipsearch.embedder import Embedder
from clipsearch.progress import progress_bar
from training.data import PLURAL_TEMPLATES, SINGULAR_TEMPLATES, all_captions, label_forms, with_articles
from training.models import DIGIT_WORDS, ModelBundle
from training.queries import query_set

log = logging.getLogger(__name__)

DISTILLATION_FILE = "distillation.json"
TEMPLATE_SHARE = 0.3  # of the corpus: caption templates; the rest: random word sequences
MENTION_SHARE = 0.6  # of the word sequences: those that mention a class somewhere
MAX_RANDOM_WORDS = 9
PROBE_SIZE = 256  # corpus sentences held out to report the fit on generated text


class DistillError(ValueError):
    """The teacher or the settings cannot be distilled; the message says why."""


@dataclass(frozen=True)
class DistillConfig:
    layers: int | None = None  # transformer layers to keep; None: half the teacher's, rounded up
    steps: int = 500
    batch_size: int = 128
    lr: float = 1e-4
    seed: int = 0
    corpus: Path | None = None  # extra text, one line per sentence (e.g. a caption file)
    progress: bool = True


@dataclass(frozen=True)
class DistillResult:
    output: Path
    teacher_layers: int
    kept_layers: list[int]
    steps: int
    seconds: float
    # Student vs teacher on the free-form evaluation queries (None: the checkpoint names no classes).
    cosine_free_form_mean: float | None
    cosine_free_form_min: float | None
    cosine_generated_mean: float  # on fresh generated sentences (the corpus under another seed)


def text_layers(model: Any) -> torch.nn.ModuleList:
    """The text tower's transformer layers: BERT-style (`encoder.layer`) or CLIP's (`encoder.layers`)."""
    encoder = getattr(model.text_model, "encoder", None)
    for name in ("layer", "layers"):
        layers = getattr(encoder, name, None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise DistillError(f"no transformer layers found in the text tower ({type(model.text_model).__name__})")


def kept_layers(total: int, keep: int) -> list[int]:
    """`keep` evenly spaced layer indices out of `total`, first and last included: 6 -> 3 gives 0, 2, 5.

    The last layer is the one whose outputs the pooler was trained on. Measured on the demo model
    after 200 steps: layers 0 and 5 fit the teacher better (cosine 0.978 on the free-form queries)
    than 0, 2 and 4 (0.970), although they are one layer fewer.
    """
    if not 1 <= keep < total:
        raise DistillError(f"the text tower has {total} layers: keep between 1 and {total - 1}")
    if keep == 1:
        return [total - 1]
    return [round(index * (total - 1) / (keep - 1)) for index in range(keep)]


def shallow_copy(model: Any, keep: Sequence[int]) -> Any:
    """A deep copy of the model whose text tower has only the layers `keep` (in order)."""
    student = copy.deepcopy(model)
    layers = text_layers(student)
    chosen = torch.nn.ModuleList([layers[index] for index in keep])
    encoder = student.text_model.encoder
    setattr(encoder, "layer" if hasattr(encoder, "layer") else "layers", chosen)
    for config in {id(c): c for c in (student.config.text_config, student.text_model.config)}.values():
        config.num_hidden_layers = len(keep)
    return student


class Corpus:
    """Sentences to distil on, generated from a checkpoint's classes and its tokenizer's vocabulary."""

    def __init__(
        self, class_names: Sequence[str], vocabulary: Sequence[str], extra: Sequence[str], seed: int
    ) -> None:
        self.random = random.Random(seed)
        self.words = list(vocabulary)
        numerals = writes_numerals(class_names)
        self.mentions = [
            form
            for label in range(len(class_names))
            for forms in label_forms(class_names, numerals, label)
            for form in forms
        ]
        self.captions = [
            c for label in range(len(class_names)) for c in all_captions(class_names, numerals, label)
        ]
        self.extra = list(extra)

    def sentence(self) -> str:
        if self.extra and self.random.random() < 0.5:
            return self.random.choice(self.extra)
        if self.random.random() < TEMPLATE_SHARE:
            if self.captions and self.random.random() < 0.7:
                return self.random.choice(self.captions)
            template = self.random.choice(SINGULAR_TEMPLATES + PLURAL_TEMPLATES)
            return with_articles(template.replace("{p}", "{}").format(self.random.choice(self.words)))
        words = [self.random.choice(self.words) for _ in range(self.random.randint(1, MAX_RANDOM_WORDS))]
        if self.mentions and self.random.random() < MENTION_SHARE:
            words.insert(self.random.randrange(len(words) + 1), self.random.choice(self.mentions))
        return " ".join(words)

    def batch(self, size: int) -> list[str]:
        return [self.sentence() for _ in range(size)]


def writes_numerals(class_names: Sequence[str]) -> bool:
    """Digit classes are also written as numerals ("7"), as MNIST's training captions write them."""
    return list(class_names) == DIGIT_WORDS


def vocabulary_words(tokenizer: Any) -> list[str]:
    """Whole words of the tokenizer's vocabulary (no sub-word pieces, special tokens or digits)."""
    words = sorted(w for w in tokenizer.get_vocab() if w.isalpha() and len(w) > 1 and w.isascii())
    if not words:
        raise DistillError("the tokenizer's vocabulary has no whole words to build a corpus from")
    return words


def pooled_and_projected(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The text tower's pooled output and its projected unit vector (what `text_features` normalises)."""
    pooled = model.text_model(**batch).pooler_output
    return pooled, F.normalize(model.text_projection(pooled), dim=-1)


def cosines(teacher: Any, student: Any, embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    """Per text: the cosine between the teacher's and the student's projected embeddings."""
    with torch.no_grad():
        batch = embedder.tokenize(texts)
        _, wanted = pooled_and_projected(teacher, batch)
        _, got = pooled_and_projected(student, batch)
    return (wanted * got).sum(dim=-1).cpu().numpy()


def distill_text(teacher_checkpoint: LoadedCheckpoint, output: Path, config: DistillConfig) -> DistillResult:
    """Distil the checkpoint's text tower as configured and write the student checkpoint to `output`."""
    torch.manual_seed(config.seed)
    teacher: Any = teacher_checkpoint.model.float().eval()
    total = len(text_layers(teacher))
    keep = kept_layers(total, config.layers if config.layers is not None else (total + 1) // 2)
    student = shallow_copy(teacher, keep)
    student.requires_grad_(False)
    student.text_model.requires_grad_(True)  # the projection stays the teacher's
    embedder = Embedder(
        teacher, teacher_checkpoint.tokenizer, teacher_checkpoint.image_processor, teacher.device
    )
    meta = teacher_checkpoint.meta
    extra = _read_corpus(config.corpus) if config.corpus else []
    words = vocabulary_words(teacher_checkpoint.tokenizer)
    corpus = Corpus(meta.class_names, words, extra, config.seed)
    probe = Corpus(meta.class_names, words, extra, config.seed + 1)
    generated_probe = probe.batch(PROBE_SIZE)
    queries = query_set(meta.class_names, writes_numerals(meta.class_names))
    free_form = [query for query, _, kind in queries if kind == "free-form"]
    log.info("distilling %d of %d text layers (%s) for %d steps", len(keep), total, keep, config.steps)

    optimizer = torch.optim.AdamW(student.text_model.parameters(), lr=config.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.steps, pct_start=0.05
    )
    student.text_model.train()
    started = time.perf_counter()
    bar = progress_bar(range(config.steps), desc="distilling the text tower", disable=not config.progress)
    for _ in bar:
        batch = embedder.tokenize(corpus.batch(config.batch_size))
        with torch.no_grad():
            teacher_pooled, teacher_vectors = pooled_and_projected(teacher, batch)
        pooled, vectors = pooled_and_projected(student, batch)
        # MSE keeps the whole pooled output (what any projection reads); cosine weighs the joint space.
        loss = 10 * F.mse_loss(pooled, teacher_pooled) + (1 - (vectors * teacher_vectors).sum(dim=-1)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    seconds = time.perf_counter() - started
    student.eval()

    free_form_cosines = cosines(teacher, student, embedder, free_form) if free_form else None
    result = DistillResult(
        output=output,
        teacher_layers=total,
        kept_layers=keep,
        steps=config.steps,
        seconds=seconds,
        cosine_free_form_mean=None if free_form_cosines is None else float(free_form_cosines.mean()),
        cosine_free_form_min=None if free_form_cosines is None else float(free_form_cosines.min()),
        cosine_generated_mean=float(cosines(teacher, student, embedder, generated_probe).mean()),
    )
    bundle = ModelBundle(student, teacher_checkpoint.tokenizer, teacher_checkpoint.image_processor, meta)
    record = {
        "teacher": str(teacher_checkpoint.path),
        "teacher_fingerprint": teacher_checkpoint.fingerprint,
        "config": {**asdict(config), "corpus": str(config.corpus) if config.corpus else None},
        "result": {**asdict(result), "output": str(output)},
    }

    def write(staging: Path) -> None:
        bundle.save(staging)
        (staging / DISTILLATION_FILE).write_text(json.dumps(record, indent=1))

    write_dir_atomically(output, write)
    return result


def _read_corpus(path: Path) -> list[str]:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DistillError(f"cannot read corpus {path}: {exc}") from None
    return [line for line in lines if line]


def distill_checkpoint(
    source: str | Path, output: Path, config: DistillConfig, device: str | None
) -> DistillResult:
    """Load the teacher through the real loader, then distil it (the CLI's entry point)."""
    return distill_text(load_checkpoint(source, device=device), output, config)
