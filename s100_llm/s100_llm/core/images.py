"""Images for a vision model, ROS-free: checks, conversion and downscaling with Pillow.

A goal's images arrive as raw pixels (sensor_msgs/Image: width, height, encoding, step, data)
or compressed (sensor_msgs/CompressedImage: a format string and JPEG or PNG bytes). Ollama
takes JPEG or PNG bytes (base64 on the wire, which its Python client does). Two steps:

- `problem()`: the cheap checks done when a goal is accepted (encoding, sizes consistent with
  the data, JPEG/PNG magic bytes, byte limit), with the image named in the reason.
- `prepare()`: decoding, downscaling so that the longest side is at most max_side (aspect
  kept), encoding; done where the goal runs. A compressed image that is small enough is
  passed through byte for byte; a raw one becomes a JPEG (quality 90; alpha is dropped,
  as vision models look at RGB), mono16 keeps its high byte. An image that does not decode
  raises ImageProblem with its name.
"""

import dataclasses
import io
from typing import Dict, Tuple, Union

from PIL import Image
from PIL import UnidentifiedImageError

JPEG_MAGIC = b'\xff\xd8\xff'
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
JPEG_QUALITY = 90
# A compressed image may expand to far more than its bytes: refuse to decode beyond this many
# pixels (a 12 MP photo is 12e6), before Pillow allocates them.
MAX_DECODE_PIXELS = 40_000_000
# encoding -> (Pillow mode, Pillow raw mode of the data, bytes per pixel).
ENCODINGS: Dict[str, Tuple[str, str, int]] = {
    'rgb8': ('RGB', 'RGB', 3),
    'bgr8': ('RGB', 'BGR', 3),
    'rgba8': ('RGB', 'RGBX', 4),     # alpha dropped
    'bgra8': ('RGB', 'BGRX', 4),
    'mono8': ('L', 'L', 1),
    'mono16': ('L', 'L;16', 2),      # the high byte (L;16B when is_bigendian)
}


class ImageProblem(ValueError):
    """An image that cannot be used; the message names the image and the cause."""


@dataclasses.dataclass(frozen=True)
class RawImage:
    """sensor_msgs/Image's fields."""

    width: int
    height: int
    encoding: str
    step: int
    is_bigendian: bool
    data: bytes


@dataclasses.dataclass(frozen=True)
class CompressedImage:
    """sensor_msgs/CompressedImage's fields (format e.g. 'jpeg', 'bgr8; jpeg compressed bgr8')."""

    format_name: str   # CompressedImage.format
    data: bytes


AnyImage = Union[RawImage, CompressedImage]


def compressed_kind(data: bytes) -> str:
    """'jpeg' or 'png' by the data's magic bytes, '' for anything else."""
    if data.startswith(JPEG_MAGIC):
        return 'jpeg'
    if data.startswith(PNG_MAGIC):
        return 'png'
    return ''


def problem(image: AnyImage, name: str, max_bytes: int) -> str:
    """Why the image cannot be used (cheap checks, no decoding), or ''. name: e.g. 'images[0]'."""
    if len(image.data) > max_bytes:
        return (f'{name} has {len(image.data)} bytes; the limit (max_image_bytes) is '
                f'{max_bytes}')
    if isinstance(image, CompressedImage):
        if not compressed_kind(image.data):
            return (f'{name} (format {image.format_name[:40]!r}) is neither JPEG nor PNG (its '
                    'data does not start with their magic bytes)')
        return ''
    if image.encoding not in ENCODINGS:
        return (f'{name} has encoding {image.encoding[:40]!r}; supported: '
                f"{', '.join(ENCODINGS)} (or send it as a compressed JPEG/PNG)")
    if image.width <= 0 or image.height <= 0:
        return f'{name} is {image.width}x{image.height}: width and height must be positive'
    row = image.width * ENCODINGS[image.encoding][2]
    if image.step < row:
        return (f'{name}: step {image.step} is less than width x bytes per pixel '
                f'({image.width} x {ENCODINGS[image.encoding][2]} = {row})')
    if len(image.data) != image.step * image.height:
        return (f'{name}: data has {len(image.data)} bytes, step x height is '
                f'{image.step} x {image.height} = {image.step * image.height}')
    return ''


def prepare(image: AnyImage, name: str, max_side: int) -> bytes:
    """The JPEG or PNG bytes to send for an image that passed problem(), with its longest side
    at most max_side. ImageProblem when it does not decode."""
    if isinstance(image, RawImage):
        mode, raw_mode, _ = ENCODINGS[image.encoding]
        if image.encoding == 'mono16' and image.is_bigendian:
            raw_mode = 'L;16B'
        picture = Image.frombuffer(mode, (image.width, image.height), image.data, 'raw',
                                   raw_mode, image.step, 1)
        return _encoded(_fitted(picture, max_side), 'JPEG')
    try:
        picture = Image.open(io.BytesIO(image.data))
    except Image.DecompressionBombError as error:   # Pillow's own limit, far above ours
        raise ImageProblem(f'{name} is not decoded: {error}') from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise _undecodable(image, name, error) from None
    width, height = picture.size
    if width * height > MAX_DECODE_PIXELS:
        raise ImageProblem(f'{name} is {width}x{height}: more than {MAX_DECODE_PIXELS} pixels '
                           'are not decoded')
    if max(width, height) <= max_side:
        return image.data   # small enough: as the camera or the caller encoded it
    try:
        picture.draft('RGB', (max_side, max_side))     # JPEG: decode at a reduced scale
        picture.load()
    except (OSError, ValueError) as error:
        raise _undecodable(image, name, error) from None
    if picture.mode not in ('RGB', 'L'):    # palette, alpha, 16-bit PNG, CMYK JPEG
        picture = picture.convert('RGB')
    kind = 'PNG' if compressed_kind(image.data) == 'png' else 'JPEG'
    return _encoded(_fitted(picture, max_side), kind)


def _undecodable(image: CompressedImage, name: str, error: Exception) -> ImageProblem:
    return ImageProblem(f'{name} does not decode as {compressed_kind(image.data).upper()}: '
                        f'{error}')


def _fitted(picture: Image.Image, max_side: int) -> Image.Image:
    """picture with its longest side at most max_side, aspect ratio kept."""
    width, height = picture.size
    if max(width, height) <= max_side:
        return picture
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return picture.resize(size, Image.BILINEAR, reducing_gap=2.0)


def _encoded(picture: Image.Image, kind: str) -> bytes:
    out = io.BytesIO()
    if kind == 'JPEG':
        picture.save(out, 'JPEG', quality=JPEG_QUALITY)
    else:
        picture.save(out, 'PNG')
    return out.getvalue()
