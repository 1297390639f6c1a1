"""What to index: the items of one source (MNIST split, image folder, caption CSV, the emoji
collection), with stable ids, and the candidate queries of its evaluation (services/indexer/evaluation.py).

Listing is cheap (paths and indices); `prepare` reads and checks one item,
producing the bytes sent to the encoder and the PNG kept in the media store.
"""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clipsearch.datasets import (
    DIGIT_WORDS,
    EMOJI_STYLES,
    LINE_ART_STYLE,
    DatasetError,
    EmojiItem,
    list_image_folder,
    load_mnist,
    read_caption_csv,
    read_emoji,
)
from clipsearch.media import png_bytes
from clipsearch.preprocess import ImageInputError, SketchNormalization, decode_image, normalize_sketch

from .settings import IndexerSettings

# Fixed namespace: ids depend only on the source identity and the item, across runs and machines.
ID_NAMESPACE = uuid.UUID("8f0c6a52-3f44-4b8e-9a55-2f6f3c1f6d2e")


class SourceError(RuntimeError):
    """The source cannot be listed; the message is for the user."""


class ItemError(ValueError):
    """One item cannot be read; it is reported and skipped."""


@dataclass(frozen=True)
class SourceItem:
    id: str
    relative_path: str  # where the item comes from, for payloads and error reports
    payload: dict[str, Any]
    caption: str | None
    load: Callable[[], bytes]  # the encoded image bytes sent to the encoder
    generated: bool = False  # bytes we encoded ourselves (a small PNG): no need to check them
    # Shorter forms of the caption, longest first, for a model that refuses it as too long (as
    # training truncates it): the first one accepted is embedded.
    caption_fallbacks: tuple[str, ...] = ()
    # A drawing (emoji line art): embedded through the model's sketch normalisation, as training and
    # a drawn query see it; the media store keeps it as it is.
    drawing: bool = False


@dataclass(frozen=True)
class PreparedItem:
    item: SourceItem
    data: bytes  # sent to the encoder
    media_png: bytes  # kept in the media store (the image, or a thumbnail of a large one)


@dataclass(frozen=True)
class BadItem:
    relative_path: str
    message: str


@dataclass(frozen=True)
class QueryCandidate:
    """A query the evaluation may ask: its text and the class names (payload `class_name`) that
    answer it."""

    text: str
    accept: tuple[str, ...]


@dataclass
class Source:
    identity: str  # e.g. "mnist:test", "folder:/data/pets": versions are resumed per identity
    kind: str
    items: list[SourceItem]
    bad: list[BadItem] = field(default_factory=list)  # found while listing (malformed CSV rows)
    # Credits the images' licences ask for, shown wherever the collection is searched.
    attribution: str | None = None
    # Candidate evaluation queries in groups (e.g. names, keywords); the query set takes from each
    # group in turn. Empty: the source has no class names to ask for.
    query_groups: list[list[QueryCandidate]] = field(default_factory=list)

    @property
    def has_captions(self) -> bool:
        return any(item.caption for item in self.items)

    def manifest(self, *, model_name: str) -> dict[str, Any]:
        """What a version built from this source records beside its vectors."""
        facts: dict[str, Any] = {"model_name": model_name}
        if self.attribution:
            facts["attribution"] = self.attribution
        return facts


def item_id(identity: str, relative: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, f"{identity}#{relative}"))


def in_shard(point_id: str, shard_count: int, shard_index: int) -> bool:
    """Whether an item belongs to a worker's shard: stable, from the id alone."""
    return shard_count == 1 or uuid.UUID(point_id).int % shard_count == shard_index


def _png_of_array(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _png_loader(pixels: np.ndarray) -> Callable[[], bytes]:
    return lambda: _png_of_array(pixels)


def _mnist_source(settings: IndexerSettings) -> Source:
    if settings.mnist_dir is None:
        raise SourceError("no MNIST directory: set INDEXER_MNIST_DIR (or MNIST_DIR) or pass --mnist-dir")
    splits: list[Any] = ["train", "test"] if settings.mnist_split == "both" else [settings.mnist_split]
    items: list[SourceItem] = []
    for split in splits:
        try:
            data = load_mnist(settings.mnist_dir, split, download=settings.mnist_download)
        except DatasetError as exc:
            raise SourceError(str(exc)) from None
        images, labels = data.images, data.labels
        # Stop listing at the limit: ids for all 70,000 images cost a second or two.
        room = len(labels) if settings.limit is None else max(0, settings.limit - len(items))
        for index in range(min(len(labels), room)):
            relative = f"{split}/{index}"
            label = int(labels[index])
            items.append(
                SourceItem(
                    id=item_id(f"mnist:{split}", str(index)),
                    relative_path=relative,
                    payload={"label": label, "class_name": str(label), "split": split, "index": index},
                    caption=None,
                    load=_png_loader(images[index]),
                    generated=True,
                )
            )
    return Source(
        identity=f"mnist:{settings.mnist_split}", kind="mnist", items=items, query_groups=[_digit_queries()]
    )


def _digit_queries() -> list[QueryCandidate]:
    """Each digit in three phrasings: its word, its numeral, and handwriting."""
    return [
        QueryCandidate(text, (str(digit),))
        for digit, word in enumerate(DIGIT_WORDS)
        for text in (word, f"the number {digit}", f"a handwritten {word}")
    ]


def _class_name_queries(items: list[SourceItem]) -> list[list[QueryCandidate]]:
    """A folder's or CSV's class names, as they are and as a photo caption."""
    names = sorted({str(item.payload["class_name"]) for item in items if "class_name" in item.payload})
    return [
        [QueryCandidate(name, (name,)) for name in names],
        [QueryCandidate(f"a photo of a {name}", (name,)) for name in names],
    ]


def _read_file(path: Path) -> Callable[[], bytes]:
    def load() -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ItemError(f"cannot read {path}: {exc.strerror or exc}") from None

    return load


def _folder_source(settings: IndexerSettings) -> Source:
    if settings.folder is None:
        raise SourceError("no image folder: set INDEXER_FOLDER or pass --folder")
    root = settings.folder.resolve()
    try:
        listed = list_image_folder(root)
    except DatasetError as exc:
        raise SourceError(str(exc)) from None
    identity = f"folder:{root}"
    items = [
        SourceItem(
            id=item_id(identity, entry.relative_path),
            relative_path=entry.relative_path,
            payload={"class_name": entry.class_name} if entry.class_name else {},
            caption=None,
            load=_read_file(entry.image_path),
        )
        for entry in listed
    ]
    return Source(identity=identity, kind="folder", items=items, query_groups=_class_name_queries(items))


def _label_fields(label: str | None) -> dict[str, Any]:
    if label is None:
        return {}
    if label.lstrip("-").isdigit():
        return {"label": int(label), "class_name": label}
    return {"class_name": label}


def _csv_source(settings: IndexerSettings) -> Source:
    if settings.csv is None:
        raise SourceError("no caption CSV: set INDEXER_CSV or pass --csv")
    path = settings.csv.resolve()
    try:
        rows, errors = read_caption_csv(path)
    except DatasetError as exc:
        raise SourceError(str(exc)) from None
    identity = f"csv:{path}"
    items = [
        SourceItem(
            id=item_id(identity, row.relative_path),
            relative_path=row.relative_path,
            payload={"caption": row.caption, **_label_fields(row.label)},
            caption=row.caption,
            load=_read_file(row.image_path),
        )
        for row in rows
    ]
    bad = [BadItem(relative_path=f"{path.name}:{e.row}", message=e.message) for e in errors]
    unique = _unique(items, bad)
    return Source(
        identity=identity, kind="csv", items=unique, bad=bad, query_groups=_class_name_queries(unique)
    )


# What each style's licence asks to be credited (the collection's README and LICENSES/), with full
# addresses: the page shows them as links.
EMOJI_CREDITS = {
    "google": "Noto Emoji by Google, Apache License 2.0 (https://github.com/googlefonts/noto-emoji)",
    "twitter": (
        "Twemoji by Twitter, Inc and other contributors, CC BY 4.0 "
        "(https://github.com/jdecked/twemoji, https://creativecommons.org/licenses/by/4.0/)"
    ),
    "openmoji": (
        "OpenMoji, the open-source emoji and icon project, CC BY-SA 4.0 "
        "(https://openmoji.org, https://creativecommons.org/licenses/by-sa/4.0/), rendered from SVG to PNG"
    ),
}
EMOJI_NAMES_CREDIT = (
    "Names and keywords: Unicode CLDR via emojibase (https://github.com/milesj/emojibase), MIT."
)
# A keyword shared by more concepts than this says too little to be a query ("face", "flag").
MAX_KEYWORD_CONCEPTS = 8


def emoji_attribution(styles: list[str]) -> str:
    """The credits of the styles indexed, then the names', as one paragraph."""
    credited = list(dict.fromkeys("openmoji" if s.startswith("openmoji") else s for s in styles))
    return f"Emoji images: {'; '.join(EMOJI_CREDITS[style] for style in credited)}. {EMOJI_NAMES_CREDIT}"


def emoji_captions(label: str, tags: tuple[str, ...]) -> tuple[str, ...]:
    """The label and its keywords, "teapot: drink, pot, tea": a caption form the emoji model is
    trained on, and one text per concept, so target=captions names the concept. Then its shorter
    forms, longest first, down to the label alone: a model with a short text window (the emoji
    model takes 32 tokens) refuses some, and training truncated the same captions at the end."""
    keywords = [tag for tag in tags if tag.lower() != label.lower()]
    return (
        *(f"{label}: {', '.join(keywords[:count])}" for count in range(len(keywords), 0, -1)),
        label,
    )


def _emoji_problem(problem: str) -> BadItem:
    """The reader's message ("image images/google/1F600.png (id 1F600, google): missing") as the
    place and what is wrong."""
    place, _, message = problem.partition(": ")
    return BadItem(place, message) if message else BadItem("emoji", problem)


def _emoji_queries(items: list[EmojiItem]) -> list[list[QueryCandidate]]:
    """Each concept's name, and each specific keyword with the concepts it names."""
    labels = sorted({item.label for item in items})
    named_by_label = set(labels)
    by_keyword: dict[str, set[str]] = {}
    for item in items:
        for tag in item.tags:
            by_keyword.setdefault(tag, set()).add(item.label)
    keywords = [
        QueryCandidate(tag, tuple(sorted(named)))
        for tag, named in sorted(by_keyword.items())
        if len(named) <= MAX_KEYWORD_CONCEPTS and tag not in named_by_label
    ]
    return [[QueryCandidate(label, (label,)) for label in labels], keywords]


def _emoji_source(settings: IndexerSettings) -> Source:
    if settings.emoji_dir is None:
        raise SourceError("no emoji directory: set INDEXER_EMOJI_DIR (or EMOJI_DIR) or pass --emoji-dir")
    root = settings.emoji_dir.resolve()
    styles = settings.styles()
    try:
        collection = read_emoji(root, styles=styles, strict=settings.fail_on_bad_items)
    except DatasetError as exc:
        raise SourceError(str(exc)) from None
    identity = f"emoji:{root}" + ("" if styles == list(EMOJI_STYLES) else f"[{','.join(styles)}]")
    items = [
        SourceItem(
            id=item_id(identity, entry.relative_path),
            relative_path=entry.relative_path,
            payload={
                "class_name": entry.label,
                "id": entry.id,
                "emoji": entry.emoji,
                "style": entry.style,
                "group": entry.group,
                "subgroup": entry.subgroup,
                "tags": list(entry.tags),
            },
            caption=captions[0],
            caption_fallbacks=captions[1:],
            load=_read_file(entry.image_path),
            drawing=entry.style == LINE_ART_STYLE,
        )
        for entry in collection.items
        for captions in [emoji_captions(entry.label, entry.tags)]
    ]
    return Source(
        identity=identity,
        kind="emoji",
        items=items,
        bad=[_emoji_problem(problem) for problem in collection.problems],
        attribution=emoji_attribution(styles),
        query_groups=_emoji_queries(collection.items),
    )


def _unique(items: list[SourceItem], bad: list[BadItem]) -> list[SourceItem]:
    """One item per id: a path listed twice is indexed once (the first row wins)."""
    seen: set[str] = set()
    unique = []
    for item in items:
        if item.id in seen:
            bad.append(BadItem(item.relative_path, f"{item.relative_path} is listed more than once"))
            continue
        seen.add(item.id)
        unique.append(item)
    return unique


def open_source(settings: IndexerSettings) -> Source:
    readers = {"mnist": _mnist_source, "folder": _folder_source, "csv": _csv_source, "emoji": _emoji_source}
    source = readers[settings.source](settings)
    if settings.limit is not None:
        source.items = source.items[: settings.limit]
        source.identity += f"[:{settings.limit}]"  # a subset is its own source: never mixed with the whole
    return source


def prepare(
    item: SourceItem, sketch_normalization: SketchNormalization = SketchNormalization.NONE
) -> PreparedItem:
    """Read and check one item; raises ItemError for anything unreadable. `sketch_normalization`:
    the embedding model's, applied to drawings."""
    data = item.load()
    if item.generated:
        return PreparedItem(item=item, data=data, media_png=data)
    try:
        image = decode_image(data)
    except ImageInputError as exc:
        raise ItemError(f"{item.relative_path}: {exc}") from None
    sent = data
    if item.drawing and sketch_normalization is not SketchNormalization.NONE:
        # Nothing the normalisation reads as strokes (an empty drawing): the picture as it is.
        with contextlib.suppress(ImageInputError):
            sent = png_bytes(normalize_sketch(image, sketch_normalization))
    # Small PNGs (MNIST) are kept as they are; anything else becomes a PNG (a thumbnail if large).
    is_small_png = data[:8] == b"\x89PNG\r\n\x1a\n" and max(image.size) <= 512
    return PreparedItem(item=item, data=sent, media_png=data if is_small_png else png_bytes(image))
