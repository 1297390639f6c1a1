"""Image and sketch decoding never fails with anything but ImageInputError, whatever the bytes."""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from clipsearch.image_limits import MAX_WORKING_SIDE, WORKING_SIDE
from clipsearch.preprocess import ImageInputError, SketchNormalization, decode_image, decode_sketch
from tests.hardening.bad_inputs import (
    broken_images,
    containers,
    encode,
    mangled_images,
    odd_but_valid_images,
    valid_images,
)

FUZZ = settings(
    derandomize=True, max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]
FORMATS = ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"]


def decodes_or_refuses(data: bytes) -> None:
    """The property: a usable RGB image, or ImageInputError (any other exception fails the test)."""
    for decode in (decode_image, lambda d: decode_sketch(d, SketchNormalization.MNIST)):
        try:
            image = decode(data)
        except ImageInputError as exc:
            refusal = str(exc)
            assert refusal, "an input error needs a message"
            continue
        assert image.mode == "RGB"
        assert image.width >= 1
        assert image.height >= 1


@st.composite
def generated_images(draw: st.DrawFn) -> bytes:
    """A real image file in a random mode, size and format (saved if the format takes the mode)."""
    mode = draw(st.sampled_from(MODES))
    size = (draw(st.integers(1, 300)), draw(st.integers(1, 300)))
    image_format = draw(st.sampled_from(FORMATS))
    colour = draw(st.integers(0, 255))
    image = Image.new("L", size, colour).convert(mode) if mode not in ("I;16",) else Image.new(mode, size)
    try:
        return encode(image, image_format)
    except (OSError, ValueError, KeyError):  # this format cannot store this mode: send the PNG
        return encode(image.convert("RGB"), "PNG")


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid file with bytes overwritten, cut off, or inserted."""
    data = bytearray(draw(st.sampled_from(sorted(valid_images().values()))))
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            data[position] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[position:]
            if not data:
                break
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data: bytes) -> None:
    decodes_or_refuses(data)


@FUZZ
@given(mutated_images())
def test_mutated_image_files(data: bytes) -> None:
    decodes_or_refuses(data)


@FUZZ
@given(generated_images())
def test_images_in_every_mode_size_and_format(data: bytes) -> None:
    decodes_or_refuses(data)


@pytest.mark.parametrize("name", sorted(broken_images()))
def test_broken_images_are_refused_with_a_reason(name: str) -> None:
    with pytest.raises(ImageInputError) as refused:
        decode_image(broken_images()[name])
    assert str(refused.value)


@pytest.mark.parametrize("name", sorted(mangled_images()))
def test_corrupted_images_decode_or_are_refused(name: str) -> None:
    decodes_or_refuses(mangled_images()[name])


@pytest.mark.parametrize("name", sorted(odd_but_valid_images()))
def test_odd_but_valid_images_decode(name: str) -> None:
    image = decode_image(odd_but_valid_images()[name])
    assert image.mode == "RGB"
    decodes_or_refuses(odd_but_valid_images()[name])


def test_bombs_are_refused_before_decoding() -> None:
    for name in ("png header 20000x20000", "real 20000x20000 1-bit png"):
        with pytest.raises(ImageInputError, match="pixels"):
            decode_image(broken_images()[name])


def test_extreme_aspect_ratios_are_refused_before_the_processor_scales_them_up() -> None:
    for name in ("extreme aspect 1x60000", "extreme aspect 200000x2"):
        with pytest.raises(ImageInputError, match="at most 100 times"):
            decode_image(broken_images()[name])


def test_the_first_frame_of_an_animation_is_used() -> None:
    first = decode_image(odd_but_valid_images()["animated gif"])
    alone = Image.open(io.BytesIO(odd_but_valid_images()["animated gif"])).convert("RGB")
    assert first.tobytes() == alone.tobytes()


@pytest.mark.parametrize("name", sorted(containers()))
def test_containers_are_refused_or_give_their_small_first_frame(name: str) -> None:
    """Issue 17, #4: an ICO holding a 9400x9400 PNG was decoded before the pixel cap was checked."""
    data = containers()[name]
    decodes_or_refuses(data)
    with contextlib.suppress(ImageInputError):
        image = decode_image(data)
        assert image.width * image.height <= WORKING_SIDE * MAX_WORKING_SIDE, image.size


def test_the_tokens_of_other_formats_are_refused() -> None:
    for name in ("ico holding a small png", "psd", "tga", "qoi"):
        with pytest.raises(ImageInputError, match="not a recognised image format"):
            decode_image(containers()[name])


def test_large_images_come_back_shrunk_and_upright() -> None:
    photo = Image.new("RGB", (3000, 2000), "white")
    ImageDraw.Draw(photo).rectangle((0, 0, 1500, 1000), fill="black")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    for image_format in ("JPEG", "PNG"):
        options: dict[str, object] = {"exif": exif}
        out = decode_image(encode(photo, image_format, **options))
        assert min(out.size) >= WORKING_SIDE
        assert out.height > out.width  # turned upright after shrinking
        assert out.getpixel((out.width - 1, 0))[0] < 64  # the black quarter is top right once turned


def test_sixteen_bit_images_are_scaled_to_eight() -> None:
    sixteen = Image.new("I;16", (2000, 1200), 0)
    ImageDraw.Draw(sixteen).rectangle((0, 0, 999, 1199), fill=65535)
    out = decode_image(encode(sixteen, "PNG"))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((out.width - 1, 0)) == (0, 0, 0)
