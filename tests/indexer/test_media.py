from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from clipsearch.media import THUMBNAIL_MAX_SIDE, MediaKeyError, MediaStore, media_key, png_bytes


def test_put_is_content_addressed_and_written_once(tmp_path: Path) -> None:
    media = MediaStore(tmp_path / "media")
    png = png_bytes(Image.new("L", (28, 28), 200))
    key = media.put(png)
    assert key == media_key(png)
    assert media.path_for(key).read_bytes() == png
    assert media.put(png) == key
    assert sorted(p.name for p in (tmp_path / "media").iterdir()) == [f"{key}.png"]  # no temp files left


def test_large_images_become_thumbnails(tmp_path: Path) -> None:
    media = MediaStore(tmp_path)
    key = media.put_image(Image.new("RGB", (2000, 1000), "red"))
    with Image.open(media.path_for(key)) as stored:
        assert stored.size == (THUMBNAIL_MAX_SIDE, THUMBNAIL_MAX_SIDE // 2)


@pytest.mark.parametrize("key", ["../etc/passwd", "a" * 63, "A" * 64, "g" * 64, "a" * 64 + "/x", ""])
def test_keys_other_than_a_hex_sha256_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(MediaKeyError):
        MediaStore(tmp_path).path_for(key)
