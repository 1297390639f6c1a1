"""Reading indexed media for GET /media/{key}: only well-formed content keys, never a path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipsearch.media import MEDIA_TYPE, MediaKeyError, MediaStore


@dataclass(frozen=True)
class MediaFile:
    key: str
    data: bytes
    media_type: str


def read_media(media_dir: str, key: str) -> MediaFile | None:
    """The stored file for `key`, or None when the key is malformed or absent.

    MediaStore.path_for accepts only 64 lowercase hex characters, so "../x",
    absolute paths and encoded separators never reach the file system.
    """
    try:
        path = MediaStore(media_dir).path_for(key)
    except MediaKeyError:
        return None
    try:
        # A symlink planted in the media directory must not serve a file from elsewhere.
        if not path.resolve(strict=True).is_relative_to(Path(media_dir).resolve(strict=True)):
            return None
        return MediaFile(key=key, data=path.read_bytes(), media_type=MEDIA_TYPE)
    except (OSError, RuntimeError):  # absent, a directory, unreadable, a symlink loop (RuntimeError)
        return None
