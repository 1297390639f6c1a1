"""Content-addressed media store: the indexed images (or thumbnails of large ones) as PNG files.

Each file is `<sha256 of its PNG bytes>.png` in one directory, written once and
atomically, so the indexer and the gateway (serving `/media/{key}`) need no
coordination, and identical images share one file.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from pathlib import Path

from PIL import Image

THUMBNAIL_MAX_SIDE = 512
MEDIA_SUFFIX = ".png"
MEDIA_TYPE = "image/png"
_KEY = re.compile(r"[0-9a-f]{64}")


class MediaKeyError(ValueError):
    """A media key that is not a hex sha256 (and so cannot name a stored file)."""


def png_bytes(image: Image.Image, *, max_side: int = THUMBNAIL_MAX_SIDE) -> bytes:
    """`image` as PNG, shrunk to fit `max_side` when larger (aspect ratio kept)."""
    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def media_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class MediaStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path_for(self, key: str) -> Path:
        """The file for `key`; raises MediaKeyError for anything but a lowercase hex sha256."""
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise MediaKeyError("media key must be 64 lowercase hex characters (a sha256)")
        return self.root / f"{key}{MEDIA_SUFFIX}"

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def put(self, png: bytes) -> str:
        """Store PNG bytes once; returns their key. Safe against concurrent writers and crashes."""
        key = media_key(png)
        target = self.path_for(key)
        if target.is_file():
            return key
        self.root.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.root, prefix=".partial-", suffix=MEDIA_SUFFIX)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(png)
            os.replace(temporary, target)  # atomic: readers see no file or the whole file
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return key

    def put_image(self, image: Image.Image) -> str:
        return self.put(png_bytes(image))
