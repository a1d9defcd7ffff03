"""core/images.py: checks, conversion, downscaling; and the image rules of core/chat/."""

import io
import os
import struct
import subprocess
import sys
import textwrap
import zlib

from PIL import Image
import pytest

from s100_llm.core.chat.checks import validate
from s100_llm.core.chat.request import ChatRequest
from s100_llm.core.chat.request import ErrorCode
from s100_llm.core.chat.request import image_note
from s100_llm.core.chat.request import Refusal
from s100_llm.core.config import ChatSettings
from s100_llm.core.config import ConfigError
from s100_llm.core.config import VisionSettings
from s100_llm.core.images import CompressedImage
from s100_llm.core.images import ImageProblem
from s100_llm.core.images import prepare
from s100_llm.core.images import problem
from s100_llm.core.images import RawImage
from s100_llm.core.sessions import SessionStore

RED = (220, 30, 30)
# One pixel of RED in each encoding.
PIXELS = {'rgb8': bytes(RED), 'bgr8': bytes(RED[::-1]), 'rgba8': bytes(RED) + b'\x07',
          'bgra8': bytes(RED[::-1]) + b'\x07', 'mono8': b'\x80', 'mono16': b'\x00\x80'}


def raw(encoding, width, height, padding=0, big_endian=False):
    pixel = PIXELS[encoding]
    if encoding == 'mono16' and big_endian:
        pixel = pixel[::-1]
    row = pixel * width + b'\xff' * padding
    return RawImage(width, height, encoding, len(row), big_endian, row * height)


def compressed(kind, width, height, colour=RED, mode='RGB'):
    out = io.BytesIO()
    Image.new('RGB', (width, height), colour).convert(mode).save(out, kind)
    return CompressedImage(kind.lower(), out.getvalue())


def decoded(data):
    picture = Image.open(io.BytesIO(data))
    picture.load()
    return picture


@pytest.mark.parametrize('encoding', sorted(PIXELS))
@pytest.mark.parametrize('big_endian', [False, True])
def test_raw_encodings_become_a_jpeg_of_the_right_colour(encoding, big_endian):
    image = raw(encoding, 40, 30, padding=5, big_endian=big_endian)
    assert problem(image, 'images[0]', 10**6) == ''
    picture = decoded(prepare(image, 'images[0]', 1024))
    assert picture.format == 'JPEG' and picture.size == (40, 30)
    colour = picture.convert('RGB').getpixel((20, 15))
    expected = (128, 128, 128) if encoding.startswith('mono') else RED
    assert all(abs(a - b) <= 3 for a, b in zip(colour, expected)), (colour, expected)


@pytest.mark.parametrize('size, limit, expected', [
    ((640, 480), 320, (320, 240)),
    ((480, 640), 320, (240, 320)),
    ((1000, 10), 100, (100, 1)),
    ((10, 1000), 100, (1, 100)),
    ((64, 48), 64, (64, 48)),
])
def test_raw_images_are_downscaled_keeping_their_aspect(size, limit, expected):
    assert decoded(prepare(raw('rgb8', *size), 'x', limit)).size == expected


@pytest.mark.parametrize('kind', ['JPEG', 'PNG'])
def test_a_small_compressed_image_passes_byte_for_byte(kind):
    image = compressed(kind, 64, 48)
    assert prepare(image, 'x', 64) is image.data


@pytest.mark.parametrize('kind, mode', [('JPEG', 'RGB'), ('PNG', 'RGB'), ('PNG', 'P'),
                                        ('PNG', 'RGBA'), ('PNG', 'L')])
def test_a_large_compressed_image_is_downscaled_in_its_own_format(kind, mode):
    picture = decoded(prepare(compressed(kind, 800, 400, mode=mode), 'x', 200))
    assert (picture.format, picture.size) == (kind, (200, 100))
    colour = picture.convert('RGB').getpixel((100, 50))
    if mode != 'L':
        assert all(abs(a - b) <= 6 for a, b in zip(colour, RED)), colour


@pytest.mark.parametrize('image, fragment', [
    (RawImage(2, 2, 'yuv422', 4, False, bytes(8)), "images[3] has encoding 'yuv422'"),
    (RawImage(2, 2, '', 6, False, bytes(12)), "images[3] has encoding ''"),
    (RawImage(0, 2, 'rgb8', 0, False, b''), 'images[3] is 0x2: width and height must be'),
    (RawImage(2, 0, 'rgb8', 6, False, b''), 'images[3] is 2x0'),
    (RawImage(4, 2, 'rgba8', 12, False, bytes(24)),
     'images[3]: step 12 is less than width x bytes per pixel (4 x 4 = 16)'),
    (RawImage(4, 2, 'rgb8', 12, False, bytes(23)),
     'images[3]: data has 23 bytes, step x height is 12 x 2 = 24'),
    (RawImage(4, 2, 'rgb8', 12, False, bytes(25)), 'data has 25 bytes'),
    (RawImage(100, 100, 'rgb8', 300, False, bytes(30000)),
     'images[3] has 30000 bytes; the limit (max_image_bytes) is 20000'),
    (CompressedImage('gif', b'GIF89a'), "images[3] (format 'gif') is neither JPEG nor PNG"),
    (CompressedImage('bgr8; jpeg compressed bgr8', b''), 'is neither JPEG nor PNG'),
    # compressedDepth: a 12-byte header before the PNG.
    (CompressedImage('16UC1; compressedDepth png', bytes(12) + b'\x89PNG\r\n\x1a\n'),
     'is neither JPEG nor PNG'),
])
def test_unusable_images_are_refused_by_name(image, fragment):
    assert fragment in problem(image, 'images[3]', 20000)


def test_image_transport_format_strings_are_accepted():
    jpeg = compressed('JPEG', 8, 8).data
    assert problem(CompressedImage('bgr8; jpeg compressed bgr8', jpeg), 'x', 10**6) == ''
    assert problem(CompressedImage('', jpeg), 'x', 10**6) == ''


def test_a_compressed_image_that_does_not_decode_raises_with_its_name():
    cut = CompressedImage('png', compressed('PNG', 64, 64).data[:60])
    with pytest.raises(ImageProblem, match=r'compressed_images\[1\] does not decode as PNG'):
        prepare(cut, 'compressed_images[1]', 16)
    garbage = CompressedImage('jpeg', b'\xff\xd8\xff' + bytes(100))
    with pytest.raises(ImageProblem, match='does not decode as JPEG'):
        prepare(garbage, 'x', 16)


def png_chunk(kind, body):
    return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))


def handmade_png(width, height, rows=None, iend=True, interlaced=False, cut=0):
    """An RGB PNG of RED written without Pillow (nothing decoded in memory, one row at a time):
    `rows` rows of data (all by default) or, interlaced, Adam7's seven passes; `cut` bytes
    fewer of the inflated data."""
    if interlaced:
        passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
                  (1, 0, 2, 2), (0, 1, 1, 2))
        sizes = [(-(-(width - x) // dx), -(-(height - y) // dy)) for x, y, dx, dy in passes]
        lines = [(columns, count) for columns, count in sizes if columns > 0 and count > 0]
    else:
        lines = [(width, height if rows is None else rows)]
    raw = (b'\0' + bytes(RED) * columns for columns, count in lines for _ in range(count))
    if cut:
        raw = iter([b''.join(raw)[:-cut]])
    compressor = zlib.compressobj()
    stream = b''.join(compressor.compress(line) for line in raw) + compressor.flush()
    header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, int(interlaced))
    data = b'\x89PNG\r\n\x1a\n' + png_chunk(b'IHDR', header) + png_chunk(b'IDAT', stream)
    return CompressedImage('png', data + (png_chunk(b'IEND', b'') if iend else b''))


@pytest.mark.parametrize('image', [
    # Issue 22.15: the header says 2000x2000, the data holds 10 rows and the file no IEND:
    # Pillow decoded it padded with black.
    handmade_png(2000, 2000, rows=10, iend=False),
    handmade_png(2000, 2000, rows=10),
    handmade_png(2000, 2000, iend=False),
    handmade_png(40, 30, rows=10),         # small: was passed on byte for byte
    handmade_png(40, 30, interlaced=True, cut=1),
])
def test_a_cut_png_does_not_decode(image):
    with pytest.raises(ImageProblem, match=r'compressed_images\[0\] does not decode as PNG: '):
        prepare(image, 'compressed_images[0]', 1024)


def test_a_png_whose_data_is_longer_than_its_header_says_is_refused():
    # A 1x1 header over 64 MB of zeros (64 KB compressed): accepted before, after inflating it
    # all (a few MB inflated to 2 GiB cost 1.85 s of CPU); counting stops after 4 bytes now.
    stream = zlib.compress(bytes(64 << 20), 9)
    header = struct.pack('>IIBBBBB', 1, 1, 8, 2, 0, 0, 0)
    data = (b'\x89PNG\r\n\x1a\n' + png_chunk(b'IHDR', header) + png_chunk(b'IDAT', stream)
            + png_chunk(b'IEND', b''))
    with pytest.raises(ImageProblem, match='longer than the 4 bytes its header says'):
        prepare(CompressedImage('png', data), 'compressed_images[0]', 1024)


@pytest.mark.parametrize('mode', ['1', 'L', 'LA', 'P', 'RGB', 'RGBA', 'I;16'])
@pytest.mark.parametrize('size', [(37, 23), (1, 1)])
def test_whole_pngs_of_every_depth_decode(mode, size):
    out = io.BytesIO()
    source = Image.new('I;16', size, 3000) if mode == 'I;16' else Image.new('RGB', size, RED)
    source.convert(mode).save(out, 'PNG')
    image = CompressedImage('png', out.getvalue())
    assert prepare(image, 'x', 1024) is image.data
    assert decoded(prepare(image, 'x', 16)).size[0] <= 16
    for interlaced in (handmade_png(*size, interlaced=True), handmade_png(37, 23)):
        assert prepare(interlaced, 'x', 1024) is interlaced.data


def test_a_cut_jpeg_does_not_decode():
    data = compressed('JPEG', 300, 200).data
    with pytest.raises(ImageProblem, match='does not decode as JPEG: image file is truncated'):
        prepare(CompressedImage('jpeg', data[:len(data) // 2]), 'x', 100)


def test_an_image_whose_decoding_would_exceed_the_pixel_budget_is_not_decoded():
    # 8000 x 8000 of one colour compresses to a few hundred KB but would take 256 MB.
    image = handmade_png(8000, 8000)
    with pytest.raises(ImageProblem, match='8000x8000: decoding it would take 64000000 pixels, '
                                           'more than the 12000000 an image may take'):
        prepare(image, 'x', 1024)


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_within_the_budget():
    # 5000 x 4000 = 20 MP, above the budget; draft mode decodes it at 1/4: 1250 x 1000.
    picture = decoded(prepare(compressed('JPEG', 5000, 4000), 'x', 1024))
    assert picture.size == (1024, 819)


# Run in a process of its own: ru_maxrss is the process's peak resident memory.
MEMORY_PROBE = textwrap.dedent("""
    import resource, sys
    sys.path[:0] = sys.argv[1:]
    from test_images import handmade_png
    from s100_llm.core.images import ImageProblem, prepare
    # Four 39.7-megapixel PNGs of 154 KB each (issue 22.16), made without decoding them.
    images = [handmade_png(7280, 5456) for _ in range(4)]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused = 0
    for index, image in enumerate(images):
        try:
            prepare(image, f'compressed_images[{index}]', 1024)
        except ImageProblem:
            refused += 1
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(refused, (after - before) // 1024)
""")


def test_images_beyond_the_budget_cost_no_decoding_memory():
    here = os.path.dirname(os.path.abspath(__file__))
    answer = subprocess.run([sys.executable, '-c', MEMORY_PROBE, here] + sys.path,
                            capture_output=True, text=True, check=True).stdout.split()
    refused, grown_mb = map(int, answer)
    # Decoded, each would have taken 159 MB (Pillow's 4 bytes a pixel); the node peaked at
    # 410 MB with them.
    assert refused == 4 and grown_mb < 20, answer


def test_a_header_claiming_a_decompression_bomb_is_refused():
    # A 1x1 PNG whose header says 20000 x 10000: Pillow refuses to open more than ~179 MP.
    data = bytearray(compressed('PNG', 1, 1).data)
    data[16:24] = struct.pack('>II', 20000, 10000)     # IHDR width, height
    data[29:33] = struct.pack('>I', zlib.crc32(bytes(data[12:29])))    # IHDR's CRC
    with pytest.raises(ImageProblem, match='x is not decoded: Image size'):
        prepare(CompressedImage('png', bytes(data)), 'x', 1024)


def vision_refusal(capabilities=('completion', 'vision'), **fields):
    """The Refusal of the goal, or None when it passes."""
    request = ChatRequest(**{'prompt': 'look', **fields})
    try:
        validate(request, ChatSettings(), SessionStore(5, 5), list(capabilities),
                 'seer:latest', VisionSettings(max_images=2, max_image_bytes=4096))
    except Refusal as refusal:
        return refusal
    return None


def vision_reason(**fields):
    """The reason the goal is refused for (INVALID_GOAL), or None when it passes."""
    refusal = vision_refusal(**fields)
    if refusal is None:
        return None
    assert refusal.code == ErrorCode.INVALID_GOAL, refusal
    return refusal.reason


def test_validation_of_images_in_a_goal():
    image = raw('rgb8', 4, 4)
    assert vision_reason(images=[image], use_camera=True) is None
    assert vision_reason(images=[image], capabilities=['completion']) == (
        "model 'seer:latest' cannot see images (capabilities: completion); send no images or "
        'use a model with the "vision" capability')
    assert 'cannot see images' in vision_reason(use_camera=True, capabilities=['completion'])
    assert vision_reason(images=[image] * 2, use_camera=True) == (
        'the goal has 3 images (camera included); the limit (max_images) is 2')
    assert 'images need a prompt' in vision_reason(
        prompt='', images=[image], tool_results=[{'tool_call_id': 'c', 'name': 'n',
                                                  'content': ''}])
    assert 'compressed_images[0] has 5000 bytes' in vision_reason(
        compressed_images=[CompressedImage('jpeg', bytes(5000))])
    assert 'images[1] has encoding' in vision_reason(
        images=[image, RawImage(1, 1, '8UC1', 1, False, b'\0')])


def test_the_camera_frame_is_checked_with_the_goal_after_its_own_fields():
    """The node takes the frame before validate(), which checks it once: NO_IMAGE for a frame
    missing or unusable, but a goal's own faults (INVALID_GOAL) are named first."""
    name = 'the camera frame from /camera/image_raw'
    yuyv = RawImage(4, 2, 'yuv422', 8, False, bytes(16))
    unusable = vision_refusal(use_camera=True, camera_image=yuyv, camera_name=name)
    assert unusable.code == ErrorCode.NO_IMAGE
    assert unusable.reason.startswith(f"{name} has encoding 'yuv422'; supported: rgb8")
    missing = vision_refusal(use_camera=True, camera_missing='use_camera: no frame yet')
    assert (missing.code, missing.reason) == (ErrorCode.NO_IMAGE, 'use_camera: no frame yet')
    assert 'cannot see images' in vision_reason(
        use_camera=True, camera_missing='use_camera: no frame yet', capabilities=['completion'])
    assert vision_reason(use_camera=True, camera_image=yuyv, output_format='[') == (
        'format is neither "json" nor a JSON document (a JSON Schema): Expecting value: line 1 '
        'column 2 (char 1)')
    assert vision_refusal(use_camera=True, camera_image=raw('rgb8', 4, 4)) is None


def test_the_session_note():
    assert image_note(1) == '[1 image was shown]'
    assert image_note(3) == '[3 images were shown]'


@pytest.mark.parametrize('topic', ['/camera/image_raw', 'camera/image_raw/compressed',
                                   '~/eyes', ''])
def test_camera_topics(topic):
    VisionSettings(camera_topic=topic).validate()


@pytest.mark.parametrize('topic', ['camera image', '/camera//raw', '/1camera', 'camera/'])
def test_bad_camera_topics(topic):
    with pytest.raises(ConfigError, match='camera_topic'):
        VisionSettings(camera_topic=topic).validate()
