"""Readers for the collection formats clipsearch knows, shared by training and the indexer.

- MNIST: the four standard idx files (gzip or not) from a local directory, or
  downloaded from the official mirrors with checksum verification.
- Caption CSV: `image_path,caption[,label]` (comma or `|` separated, header
  optional), paths relative to the CSV.
- Class folders: one subfolder per class (Oxford-IIIT Pets style).
- Emoji: `emoji.csv` and `images/<style>/<id>.png` from a local directory (EMOJI_DIR), or built
  from the pinned upstream npm packages; items carry id, emoji, label, tags, group, subgroup, style.

Torch-free: the indexer and the gateway import it.
"""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import json
import logging
import os
import re
import tarfile
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

Split = Literal["train", "test"]

MNIST_FILES: dict[str, tuple[str, str]] = {
    # name -> (file, md5 of the official .gz as the mirrors publish it)
    "train-images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train-labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    "test-images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    "test-labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# MNIST's class names in words, as training captions them and the indexer's evaluation queries ask.
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


class DatasetError(RuntimeError):
    """A collection cannot be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class MnistSplit:
    images: np.ndarray  # (n, 28, 28) uint8, white digit on black
    labels: np.ndarray  # (n,) int64


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise DatasetError(f"{path} holds {len(data) - offset} bytes of data; its header says {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _locate(directory: Path, filename: str) -> Path | None:
    for candidate in (directory / filename, directory / filename.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def download_mnist(directory: Path) -> None:
    """Fetch missing MNIST files from the official mirrors, verifying each download's published checksum."""
    directory.mkdir(parents=True, exist_ok=True)
    for filename, md5 in MNIST_FILES.values():
        if _locate(directory, filename):
            continue
        errors = []
        for mirror in MNIST_MIRRORS:
            try:
                with urllib.request.urlopen(mirror + filename, timeout=60) as response:
                    payload = response.read()
            except OSError as exc:
                errors.append(f"{mirror}: {exc}")
                continue
            digest = hashlib.md5(payload, usedforsecurity=False).hexdigest()
            if digest != md5:
                errors.append(f"{mirror}: checksum {digest} does not match {md5}")
                continue
            partial = directory / (filename + ".part")
            partial.write_bytes(payload)
            partial.replace(directory / filename)
            log.info("downloaded %s from %s", filename, mirror)
            break
        else:
            raise DatasetError(f"could not download {filename}: " + "; ".join(errors))


def load_mnist(directory: Path, split: Split, *, download: bool = False) -> MnistSplit:
    """One MNIST split from `directory` (set MNIST_DIR); downloads first when allowed."""
    directory = Path(directory)
    prefix = "train" if split == "train" else "test"
    image_name, _ = MNIST_FILES[f"{prefix}-images"]
    label_name, _ = MNIST_FILES[f"{prefix}-labels"]
    if download and not (_locate(directory, image_name) and _locate(directory, label_name)):
        download_mnist(directory)
    image_path, label_path = _locate(directory, image_name), _locate(directory, label_name)
    if image_path is None or label_path is None:
        missing = image_name if image_path is None else label_name
        raise DatasetError(
            f"MNIST file {missing} not found in {directory}: point MNIST_DIR at the idx files, "
            "or allow the download"
        )
    images, labels = _read_idx(image_path), _read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"{image_path} and {label_path} do not match ({images.shape} vs {labels.shape})")
    return MnistSplit(images=images, labels=labels.astype(np.int64))


@dataclass(frozen=True)
class CaptionRow:
    row: int  # 1-based line number in the CSV, for error messages
    image_path: Path
    relative_path: str
    caption: str
    label: str | None


@dataclass(frozen=True)
class RowError:
    row: int
    message: str


def read_caption_csv(path: Path) -> tuple[list[CaptionRow], list[RowError]]:
    """Rows of `image_path,caption[,label]`; malformed rows are returned as errors, not raised."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    first = text.splitlines()[0] if text.strip() else ""
    delimiter = "|" if first.count("|") > first.count(",") else ","
    rows: list[CaptionRow] = []
    errors: list[RowError] = []
    for number, fields in enumerate(csv.reader(text.splitlines(), delimiter=delimiter), start=1):
        if not fields or all(not f.strip() for f in fields):
            continue
        fields = [f.strip() for f in fields]
        if number == 1 and fields[0].lower() in {"image_path", "image", "image_name", "path", "filename"}:
            continue
        if len(fields) < 2 or len(fields) > 3 or not fields[0] or not fields[1]:
            errors.append(
                RowError(number, f"{path}:{number}: expected image_path,caption[,label], got {fields!r}")
            )
            continue
        relative = fields[0]
        rows.append(
            CaptionRow(
                row=number,
                image_path=(path.parent / relative),
                relative_path=relative,
                caption=fields[1],
                label=fields[2] if len(fields) == 3 and fields[2] else None,
            )
        )
    return rows, errors


@dataclass(frozen=True)
class FolderItem:
    image_path: Path
    relative_path: str
    class_name: str | None  # the first-level subfolder, when the folder is organised by class


def list_image_folder(root: Path, *, classes_from_subfolders: bool = True) -> list[FolderItem]:
    """Image files under `root` (recursive, sorted); the class is the first-level subfolder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist")
    items = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        relative = path.relative_to(root)
        class_name = relative.parts[0] if classes_from_subfolders and len(relative.parts) > 1 else None
        items.append(FolderItem(image_path=path, relative_path=relative.as_posix(), class_name=class_name))
    return items


# --- Emoji -----------------------------------------------------------------------------------------
# A collection laid out as `EMOJI_DIR` holds it (see the dataset's README): `emoji.csv`, one row per
# concept, and `images/<style>/<id>.png` for every style.

EMOJI_STYLES = ("google", "twitter", "openmoji", "openmoji-line")
LINE_ART_STYLE = "openmoji-line"  # black line art: the sketch view of each concept
EMOJI_CSV = "emoji.csv"
EMOJI_LANGUAGES = ("de", "es", "fr", "it", "ja", "pt", "ru", "zh")
EMOJI_COLUMNS = (
    "id",
    "emoji",
    "label",
    "tags",
    "group",
    "subgroup",
    *(f"label_{language}" for language in EMOJI_LANGUAGES),
)
OPENMOJI_PIXELS = 72  # the SVGs are rendered at this size, as the shared copy was


@dataclass(frozen=True)
class EmojiConcept:
    """One row of emoji.csv."""

    line: int  # 1-based line number in emoji.csv, for messages
    id: str  # Unicode hexcode as emojibase writes it: "1F600", "2764-FE0F"
    emoji: str
    label: str  # CLDR English name, unique per concept
    tags: tuple[str, ...]
    group: str
    subgroup: str


@dataclass(frozen=True)
class EmojiItem:
    """One image of one concept in one style: what training and the indexer read."""

    image_path: Path
    id: str
    emoji: str
    label: str
    tags: tuple[str, ...]
    group: str
    subgroup: str
    style: str

    @property
    def relative_path(self) -> str:
        return f"images/{self.style}/{self.id}.png"


@dataclass
class EmojiCollection:
    root: Path
    concepts: list[EmojiConcept]  # in emoji.csv order, bad rows left out
    items: list[EmojiItem]  # concept by concept, styles in the order asked; bad images left out
    problems: list[str]  # what was left out, and why


def _emoji_problem(problems: list[str], message: str, strict: bool) -> None:
    if strict:
        raise DatasetError(message)
    log.warning("skipping %s", message)
    problems.append(message)


def read_emoji_csv(path: Path, *, strict: bool = False) -> tuple[list[EmojiConcept], list[str]]:
    """The concepts of emoji.csv; a malformed row is named by its line and left out (or raises)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header is None or not {"id", "label"} <= set(header):
        raise DatasetError(
            f"{path}: the first line must be a header with at least id and label, got {header}"
        )
    concepts: list[EmojiConcept] = []
    problems: list[str] = []
    seen_ids: set[str] = set()
    seen_labels: set[str] = set()
    for line, fields in enumerate(reader, start=2):
        if not fields or all(not field.strip() for field in fields):
            continue
        if len(fields) != len(header):
            _emoji_problem(
                problems,
                f"{path}:{line}: expected {len(header)} fields, got {len(fields)}: {fields[:3]!r}",
                strict,
            )
            continue
        row = dict(zip(header, (field.strip() for field in fields), strict=True))
        hexcode, label = row["id"], row["label"]
        if not re.fullmatch(r"[0-9A-F]{2,6}(-[0-9A-F]{2,6})*", hexcode):
            _emoji_problem(problems, f"{path}:{line}: id {hexcode!r} is not a hexcode like 1F600", strict)
            continue
        if not label:
            _emoji_problem(problems, f"{path}:{line}: id {hexcode} has no label", strict)
            continue
        if hexcode in seen_ids or label in seen_labels:
            _emoji_problem(problems, f"{path}:{line}: id {hexcode} or label {label!r} appears twice", strict)
            continue
        seen_ids.add(hexcode)
        seen_labels.add(label)
        concepts.append(
            EmojiConcept(
                line=line,
                id=hexcode,
                emoji=row.get("emoji", ""),
                label=label,
                tags=tuple(tag for tag in row.get("tags", "").split("|") if tag),
                group=row.get("group", ""),
                subgroup=row.get("subgroup", ""),
            )
        )
    return concepts, problems


def _check_png(path: Path) -> str | None:
    """Why the image cannot be used, or None. Decodes it fully: a truncated file fails here, not later."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if image.width < 1 or image.height < 1:
                return "has no pixels"
    except FileNotFoundError:
        return "missing"
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        return f"unreadable ({exc})"
    return None


def read_emoji(
    directory: Path | None = None,
    *,
    styles: Sequence[str] = EMOJI_STYLES,
    strict: bool = False,
    download: bool = False,
    check_images: bool = True,
) -> EmojiCollection:
    """The emoji collection in `directory` (default: $EMOJI_DIR), fetched from upstream first when allowed.

    Bad data (a malformed emoji.csv row, a missing or unreadable image) is logged with its line or id
    and left out, or raises DatasetError with that message when `strict`.
    """
    root = resolve_emoji_dir(directory)
    unknown = [style for style in styles if style not in EMOJI_STYLES]
    if unknown:
        raise DatasetError(f"unknown emoji style(s) {unknown}: choose from {', '.join(EMOJI_STYLES)}")
    if download and not (root / EMOJI_CSV).is_file():
        download_emoji(root)
    if not (root / EMOJI_CSV).is_file():
        raise DatasetError(
            f"{root / EMOJI_CSV} not found: point EMOJI_DIR at the emoji collection, or allow the download"
        )
    concepts, problems = read_emoji_csv(root / EMOJI_CSV, strict=strict)
    items: list[EmojiItem] = []
    for concept in concepts:
        for style in styles:
            path = root / "images" / style / f"{concept.id}.png"
            problem = _check_png(path) if check_images else (None if path.is_file() else "missing")
            if problem is not None:
                _emoji_problem(
                    problems,
                    f"image images/{style}/{concept.id}.png (id {concept.id}, {style}): {problem}",
                    strict,
                )
                continue
            items.append(
                EmojiItem(
                    image_path=path,
                    id=concept.id,
                    emoji=concept.emoji,
                    label=concept.label,
                    tags=concept.tags,
                    group=concept.group,
                    subgroup=concept.subgroup,
                    style=style,
                )
            )
    if not items:
        raise DatasetError(f"{root} has no usable emoji images ({len(problems)} problems)")
    return EmojiCollection(root=root, concepts=concepts, items=items, problems=problems)


def resolve_emoji_dir(directory: Path | None) -> Path:
    if directory is not None:
        return Path(directory)
    configured = os.environ.get("EMOJI_DIR")
    if not configured:
        raise DatasetError("emoji needs a directory: set EMOJI_DIR (or pass --emoji-dir)")
    return Path(configured)


def heldout_concepts(ids: Sequence[str], fraction: float, seed: int) -> set[str]:
    """A seeded share of the concept ids, never trained on (all their styles): the unseen concepts.

    Depends only on the sorted ids, the fraction and the seed, so training and evaluation agree.
    """
    if fraction <= 0:
        return set()
    ordered = sorted(ids)
    order = np.random.default_rng(seed).permutation(len(ordered))
    return {ordered[int(i)] for i in order[: round(len(ordered) * fraction)]}


def export_caption_csv(collection: EmojiCollection, path: Path, *, caption: str = "label") -> int:
    """Write a seed-style `image_path,caption,label` CSV of the collection (paths relative to the CSV).

    The caption is the label (or, with caption="tags", the label and keywords); the third column
    keeps the concept so label-aware training treats the other styles as the same concept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_path", "caption", "label"])
        for item in collection.items:
            text = item.label if caption == "label" else ", ".join([item.label, *item.tags])
            writer.writerow([os.path.relpath(item.image_path, path.parent), text, item.id])
    return len(collection.items)


# --- Emoji from upstream ------------------------------------------------------------------------
# The shared copy was built from these npm packages (the upstream projects publish them there); the
# tarballs are pinned by the sha512 integrity the registry publishes for each. Built from them, the
# Google and Twitter PNGs and emoji.csv are byte-identical to the shared copy; OpenMoji's PNGs are
# rendered from its SVGs (cairosvg, in the `training` extra), identical up to anti-aliasing.


@dataclass(frozen=True)
class NpmPackage:
    name: str
    version: str
    integrity: str  # "sha512-<base64>", as the registry's dist.integrity gives it

    @property
    def tarball(self) -> str:
        return f"{self.name}-{self.version}.tgz"


NPM_REGISTRY = "https://registry.npmjs.org/"
EMOJI_PACKAGES = {
    "google": NpmPackage(
        "emoji-datasource-google",
        "16.0.0",
        "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
    ),
    "twitter": NpmPackage(
        "emoji-datasource-twitter",
        "16.0.0",
        "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
    ),
    "openmoji": NpmPackage(
        "openmoji",
        "17.0.0",
        "sha512-EBnYrNGdcdw+OSXmENeNE1yBNRu6tOraTmoOyUbJkTmvT/+XETp8RZLSJFzD3lrPc5N9CzsyPnRTk0Vp4UaI9w==",
    ),
    "names": NpmPackage(
        "emojibase-data",
        "17.0.0",
        "sha512-Yvgb5AWoHViHV/gq1qr5ZAarcBip+B27/ZLRsUJkbgAEaLlZ/fof9g882LTpmEpyhBNEC0m2SEmItljHsTygjA==",
    ),
}
EMOJIBASE_COMPONENT_GROUP = 2  # skin tones and hair styles: parts of emoji, not concepts


def _sri_matches(payload: bytes, integrity: str) -> bool:
    algorithm, _, expected = integrity.partition("-")
    if algorithm not in {"sha256", "sha384", "sha512"}:
        return False
    return base64.b64encode(hashlib.new(algorithm, payload).digest()).decode() == expected


def fetch_npm_tarball(package: NpmPackage, cache: Path, registry: str = NPM_REGISTRY) -> Path:
    """The package's tarball in `cache`, downloaded once and checked against its pinned integrity."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / package.tarball
    if target.is_file() and _sri_matches(target.read_bytes(), package.integrity):
        return target
    url = f"{registry.rstrip('/')}/{package.name}/-/{package.tarball}"
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            payload = response.read()
    except OSError as exc:
        raise DatasetError(f"could not download {url}: {exc}") from None
    if not _sri_matches(payload, package.integrity):
        raise DatasetError(
            f"{url}: the download does not match the pinned integrity {package.integrity[:24]}..."
        )
    partial = target.with_suffix(".part")
    partial.write_bytes(payload)
    partial.replace(target)
    log.info("downloaded %s (%d bytes) from %s", package.tarball, len(payload), url)
    return target


def _tar_members(path: Path, wanted: Callable[[str], bool]) -> dict[str, bytes]:
    """The regular files of an npm tarball whose names (without the leading `package/`) pass `wanted`."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:
                name = member.name.split("/", 1)[1] if "/" in member.name else member.name
                if member.isfile() and wanted(name):
                    handle = archive.extractfile(member)
                    if handle is not None:
                        found[name] = handle.read()
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    return found


def _render_svg(svg: bytes, pixels: int) -> bytes:
    try:
        import cairosvg
    except (ImportError, OSError) as exc:  # OSError: the cairo library itself is missing
        raise DatasetError(
            f"rendering OpenMoji's SVGs needs cairosvg (in the training extra) and libcairo2: {exc}"
        ) from None
    png: bytes = cairosvg.svg2png(bytestring=svg, output_width=pixels, output_height=pixels)
    return png


def download_emoji(
    directory: Path, *, registry: str = NPM_REGISTRY, packages: dict[str, NpmPackage] | None = None
) -> None:
    """Build the emoji collection in `directory` from the pinned upstream npm packages.

    Concepts: every emojibase emoji (no skin-tone variants, no components) that Google, Twitter and
    OpenMoji (colour and black) all draw, in emojibase order; what the shared copy holds.
    """
    directory = Path(directory)
    cache = directory / ".downloads"
    pinned = packages or EMOJI_PACKAGES
    tarballs = {key: fetch_npm_tarball(pinned[key], cache, registry) for key in EMOJI_PACKAGES}
    names = _tar_members(
        tarballs["names"],
        lambda n: (
            n in {"en/data.json", "en/messages.json"}
            or n in {f"{language}/data.json" for language in EMOJI_LANGUAGES}
            or n == "LICENSE"
        ),
    )
    try:
        english = json.loads(names["en/data.json"])
        messages = json.loads(names["en/messages.json"])
        translations = {
            language: {e["hexcode"]: e["label"] for e in json.loads(names[f"{language}/data.json"])}
            for language in EMOJI_LANGUAGES
        }
    except (KeyError, ValueError) as exc:
        raise DatasetError(f"{tarballs['names']} does not hold the emojibase data expected: {exc}") from None
    groups = {g["order"]: g["message"] for g in messages["groups"]}
    subgroups = {g["order"]: g["message"] for g in messages["subgroups"]}
    images: dict[str, dict[str, str]] = {}  # style -> hexcode -> file name in the tarball
    raster: dict[str, dict[str, bytes]] = {}
    licences: dict[str, bytes] = {"emojibase-MIT.txt": names["LICENSE"]}
    for style in ("google", "twitter"):
        prefix = f"img/{style}/64/"
        files = _tar_members(
            tarballs[style],
            lambda n: n.startswith(prefix) or n in {"emoji.json", "LICENSE", "README.md"},  # noqa: B023
        )
        index: dict[str, str] = {}
        for entry in json.loads(files["emoji.json"]):
            if entry.get(f"has_img_{style}"):
                for key in (entry["unified"], entry.get("non_qualified")):
                    if key:
                        index[key.upper()] = entry["image"]
        images[style] = index
        raster[style] = {
            name.rsplit("/", 1)[1]: data for name, data in files.items() if name.startswith("img/")
        }
        licences["emoji-datasource-MIT.txt"] = files["LICENSE"]
        readme = files["README.md"].decode("utf-8").splitlines()
        licences["images-google-twitter.txt"] = (
            "\n".join(
                line for line in readme if line.startswith(("* Android/Google", "* Twitter images"))
            ).encode()
            + b"\n"
        )
    openmoji = _tar_members(
        tarballs["openmoji"],
        lambda n: n.startswith(("color/svg/", "black/svg/")) or n == "LICENSE.txt",
    )
    licences["openmoji-CC-BY-SA-4.0.txt"] = openmoji["LICENSE.txt"]

    rows = []
    for entry in sorted(english, key=lambda e: e.get("order", 1 << 30)):
        hexcode = entry["hexcode"]
        if entry.get("group") in (None, EMOJIBASE_COMPONENT_GROUP):
            continue
        if not all(hexcode in images[style] for style in ("google", "twitter")):
            continue
        if not all(f"{colour}/svg/{hexcode}.svg" in openmoji for colour in ("color", "black")):
            continue
        rows.append(entry)
    if not rows:
        raise DatasetError("the upstream packages share no emoji: nothing to build")
    for style in EMOJI_STYLES:
        (directory / "images" / style).mkdir(parents=True, exist_ok=True)
    for entry in rows:
        hexcode = entry["hexcode"]
        for style in ("google", "twitter"):
            (directory / "images" / style / f"{hexcode}.png").write_bytes(
                raster[style][images[style][hexcode]]
            )
        for style, colour in (("openmoji", "color"), ("openmoji-line", "black")):
            png = _render_svg(openmoji[f"{colour}/svg/{hexcode}.svg"], OPENMOJI_PIXELS)
            (directory / "images" / style / f"{hexcode}.png").write_bytes(png)
    (directory / "LICENSES").mkdir(exist_ok=True)
    for name, text in licences.items():
        (directory / "LICENSES" / name).write_bytes(text)
    partial = directory / (EMOJI_CSV + ".part")
    with partial.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(EMOJI_COLUMNS)
        for entry in rows:
            hexcode = entry["hexcode"]
            writer.writerow(
                [
                    hexcode,
                    entry["emoji"],
                    entry["label"],
                    "|".join(entry.get("tags", [])),
                    groups[entry["group"]],
                    subgroups[entry["subgroup"]],
                    *(translations[language].get(hexcode, "") for language in EMOJI_LANGUAGES),
                ]
            )
    partial.replace(directory / EMOJI_CSV)  # last: a directory with emoji.csv is complete
    log.info("built the emoji collection in %s: %d concepts", directory, len(rows))
