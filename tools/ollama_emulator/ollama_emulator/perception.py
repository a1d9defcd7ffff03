"""What the scripted vision and embedding models compute, deterministically.

vision      `seer` describes the images it was given: their count, and for each its width x
            height and dominant colour, read by decoding the image (Pillow), so an image that
            does not decode fails as it would with a real model. Each image costs
            IMAGE_TOKENS prompt tokens, as a real vision model counts its image patches.
embedding   `embedder` maps a text to a unit vector by feature hashing of its lower-cased
            words: texts that share words are closer (higher cosine similarity), so tests can
            check a ranking. Every vector also has a small constant component, so the empty
            text has a direction too.
"""

import base64
import binascii
import hashlib
import io
import math
import re
from typing import List, Sequence, Tuple

from PIL import Image
from PIL import UnidentifiedImageError

IMAGE_TOKENS = 256
EMBEDDING_DIMENSIONS = 64
_WORD = re.compile(r'\w+')
_COLOURS: Tuple[Tuple[str, Tuple[int, int, int]], ...] = (
    ('black', (0, 0, 0)), ('white', (255, 255, 255)), ('gray', (128, 128, 128)),
    ('red', (220, 30, 30)), ('green', (30, 180, 30)), ('blue', (30, 30, 220)),
    ('yellow', (230, 220, 40)), ('orange', (240, 140, 20)), ('purple', (130, 40, 160)),
    ('brown', (120, 70, 30)),
)


class ImageError(ValueError):
    """An image did not decode (Ollama: 'failed to process inputs: image: unknown format')."""


def describe_images(images: Sequence[str]) -> str:
    """'I see 2 images: 1) 64x48, mostly red; 2) ...' for base64 images (data URLs allowed)."""
    parts = []
    for number, encoded in enumerate(images, start=1):
        width, height, colour = _look_at(encoded)
        parts.append(f'{number}) {width}x{height}, mostly {colour}')
    noun = 'image' if len(images) == 1 else 'images'
    return f"I see {len(images)} {noun}: {'; '.join(parts)}"


def _look_at(encoded: str) -> Tuple[int, int, str]:
    data = encoded.split(',', 1)[1] if encoded.startswith('data:') else encoded
    try:
        with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as image:
            width, height = image.size
            average = image.convert('RGB').resize((1, 1), Image.BILINEAR).getpixel((0, 0))
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError):
        raise ImageError('failed to process inputs: image: unknown format') from None
    colour = min(_COLOURS, key=lambda named: sum((a - b) ** 2
                                                 for a, b in zip(named[1], average)))[0]
    return width, height, colour


def embed(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> List[float]:
    """The embedder's unit vector for text."""
    vector = [0.0] * dimensions
    vector[0] = 0.1
    for word in _WORD.findall(text.lower()):
        digest = hashlib.sha256(word.encode()).digest()
        index = 1 + int.from_bytes(digest[:4], 'little') % (dimensions - 1)
        vector[index] += 1.0 if digest[4] & 1 else -1.0
    return normalized(vector)


def normalized(vector: List[float]) -> List[float]:
    length = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / length for x in vector]
