"""Images for a vision model, ROS-free: checks, conversion and downscaling with Pillow.

A goal's images arrive as raw pixels (sensor_msgs/Image: width, height, encoding, step, data)
or compressed (sensor_msgs/CompressedImage: a format string and JPEG or PNG bytes). Ollama
takes JPEG or PNG bytes (base64 on the wire, which its Python client does). Two steps:

- `problem()`: the cheap checks done when a goal is accepted (encoding, sizes consistent with
  the data, JPEG/PNG magic bytes, byte limit), with the image named in the reason.
- `prepare()`: decoding, downscaling so that the longest side is at most max_side (aspect
  kept), encoding; done where the goal runs. A compressed image that is small enough is
  passed through byte for byte (after a decode that proves it whole); a raw one becomes a
  JPEG (quality 90; alpha is dropped, as vision models look at RGB), mono16 keeps its high
  byte. An image that does not decode, or is cut short, raises ImageProblem with its name.

What decoding may cost is bounded by pixels, not bytes (a PNG of one colour compresses
40 megapixels into 150 KB): the header's size is read first (Image.open reads no pixel data),
a JPEG larger than needed is decoded at 1/2 to 1/8 scale (draft mode), and an image whose
decoding would still hold more than MAX_DECODE_PIXELS is refused before Pillow allocates them.
A goal's images are prepared one after another, so a goal holds one decoded image at a time.
"""

import dataclasses
import io
import struct
from typing import Dict, Tuple, Union
import zlib

from PIL import Image
from PIL import ImageFile
from PIL import UnidentifiedImageError

JPEG_MAGIC = b'\xff\xd8\xff'
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
JPEG_QUALITY = 90
# Most pixels one compressed image may be decoded to (after JPEG's draft scaling): 4000x3000.
# Pillow holds RGB as 4 bytes a pixel, so about 48 MB, and 96 MB while a palette or alpha
# PNG is converted to RGB.
MAX_DECODE_PIXELS = 12_000_000
# Pillow pads a cut image with black when this is true; it is Pillow's default, kept false.
ImageFile.LOAD_TRUNCATED_IMAGES = False
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
        picture = Image.open(io.BytesIO(image.data))   # reads the header, not the pixels
    except Image.DecompressionBombError as error:   # Pillow's own limit, far above ours
        raise ImageProblem(f'{name} is not decoded: {error}') from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise _undecodable(image, name, error) from None
    width, height = picture.size
    small = max(width, height) <= max_side
    if not small:
        picture.draft('RGB', _fitted_size(picture.size, max_side))  # JPEG: at a reduced scale
    decoded_width, decoded_height = picture.size
    if decoded_width * decoded_height > MAX_DECODE_PIXELS:
        raise ImageProblem(f'{name} is {width}x{height}: decoding it would take '
                           f'{decoded_width * decoded_height} pixels, more than the '
                           f'{MAX_DECODE_PIXELS} an image may take')
    try:
        if compressed_kind(image.data) == 'png':
            _check_png_whole(image.data, picture)
        picture.load()
    except (OSError, ValueError, SyntaxError, struct.error, zlib.error) as error:
        raise _undecodable(image, name, error) from None
    if small:
        return image.data   # as the camera or the caller encoded it, now known to decode
    if picture.mode not in ('RGB', 'L'):    # palette, alpha, 16-bit PNG, CMYK JPEG
        picture = picture.convert('RGB')
    kind = 'PNG' if compressed_kind(image.data) == 'png' else 'JPEG'
    return _encoded(_fitted(picture, max_side), kind)


# PNG colour type -> samples per pixel; Adam7's passes as (x start, y start, x step, y step).
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))


def _check_png_whole(data: bytes, picture: Image.Image) -> None:
    """ValueError unless the PNG's image data holds every row and the file ends with IEND.

    Pillow pads a PNG whose compressed stream ends early with black, without an error, even
    with LOAD_TRUNCATED_IMAGES false (Pillow 9 to 13), and does not mind a missing IEND: a cut
    file could be described to the model as a black picture. The stream is inflated in
    pieces and only counted, so this costs time, not memory; it stops as soon as the data is
    longer than the header says (a small file can inflate to gigabytes), which is refused too.
    """
    inflater = zlib.decompressobj()
    inflated = 0
    offset = len(PNG_MAGIC)
    expected = _png_data_size(picture.size, data[offset + 16:offset + 21])  # IHDR comes first
    while True:
        if offset + 8 > len(data):
            raise ValueError('the file ends before its IEND chunk (cut short?)')
        length, kind = struct.unpack('>I4s', data[offset:offset + 8])
        body = data[offset + 8:offset + 8 + length]
        offset += 12 + length
        if kind == b'IDAT':
            inflated += _inflated_size(inflater, body, expected - inflated + 1)
            if inflated > expected:
                raise ValueError(f'its image data is longer than the {expected} bytes its '
                                 'header says')
        elif kind == b'IEND':
            break
    if inflated < expected or not inflater.eof:
        raise ValueError(f'its image data ends after {inflated} of {expected} bytes '
                         '(cut short?)')


def _png_data_size(size: Tuple[int, int], header: bytes) -> int:
    """The inflated image data's size a PNG header (bit depth, colour type, compression,
    filter, interlace) promises for an image of this size: a filter byte and the packed
    samples per row, per Adam7 pass when interlaced."""
    width, height = size
    depth, colour, _, _, interlaced = struct.unpack('>BBBBB', header)
    bits = depth * _PNG_SAMPLES.get(colour, 4)
    passes = _ADAM7 if interlaced else ((0, 0, 1, 1),)
    expected = 0
    for x0, y0, dx, dy in passes:
        columns, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if columns > 0 and rows > 0:
            expected += rows * (1 + -(-columns * bits // 8))
    return expected


def _inflated_size(inflater: 'zlib._Decompress', chunk: bytes, limit: int) -> int:
    """How many bytes chunk inflates to, in pieces of at most 1 MB, counting no further than
    limit."""
    size = 0
    while chunk and not inflater.eof and size < limit:
        size += len(inflater.decompress(chunk, 1 << 20))
        chunk = inflater.unconsumed_tail
    return size


def _undecodable(image: CompressedImage, name: str, error: Exception) -> ImageProblem:
    return ImageProblem(f'{name} does not decode as {compressed_kind(image.data).upper()}: '
                        f'{error}')


def _fitted_size(size: Tuple[int, int], max_side: int) -> Tuple[int, int]:
    """size scaled so that its longest side is at most max_side, aspect ratio kept."""
    width, height = size
    if max(width, height) <= max_side:
        return size
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _fitted(picture: Image.Image, max_side: int) -> Image.Image:
    """picture with its longest side at most max_side, aspect ratio kept."""
    size = _fitted_size(picture.size, max_side)
    if size == picture.size:
        return picture
    return picture.resize(size, Image.BILINEAR, reducing_gap=2.0)


def _encoded(picture: Image.Image, kind: str) -> bytes:
    out = io.BytesIO()
    if kind == 'JPEG':
        picture.save(out, 'JPEG', quality=JPEG_QUALITY)
    else:
        picture.save(out, 'PNG')
    return out.getvalue()
