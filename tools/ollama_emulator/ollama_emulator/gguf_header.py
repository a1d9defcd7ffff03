"""What Ollama's create reads from a GGUF before it accepts it: the header, the metadata (the
architecture and the file type) and the tensor table, checked against the file's size with
Ollama's own messages (fs/ggml/ggml.go and gguf.go).

The `gguf` package of llama.cpp reads the same, but builds a numpy view of every tensor: 24 s
for the 98 MB SmolLM2 file on a loaded 2-core machine, where this reads only the header
(milliseconds). GGUF layout: magic, u32 version, u64 tensor count, u64 metadata count, the
metadata (key, u32 type, value), the tensor infos (name, u32 dims, u64 shape..., u32 type, u64
offset), then the data aligned to general.alignment (32).
"""

import dataclasses
import struct
from typing import Any, BinaryIO, Dict, List, Tuple

MAGIC = b'GGUF'
# Scalar metadata types: id -> struct format.
_SCALARS = {0: '<B', 1: '<b', 2: '<H', 3: '<h', 4: '<I', 5: '<i', 6: '<f', 7: '<?',
            10: '<Q', 11: '<q', 12: '<d'}
_STRING, _ARRAY = 8, 9
# ggml tensor types: id -> (elements per block, bytes per block); others are not checked.
_BLOCKS = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24),
           8: (32, 34), 9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144),
           13: (256, 176), 14: (256, 210), 15: (256, 292), 30: (1, 2)}
# general.file_type -> the name Ollama gives it (fs/ggml/type.go FileType.String).
FILE_TYPES = {0: 'F32', 1: 'F16', 2: 'Q4_0', 3: 'Q4_1', 7: 'Q8_0', 8: 'Q5_0', 9: 'Q5_1',
              10: 'Q2_K', 11: 'Q3_K_S', 12: 'Q3_K_M', 13: 'Q3_K_L', 14: 'Q4_K_S',
              15: 'Q4_K_M', 16: 'Q5_K_S', 17: 'Q5_K_M', 18: 'Q6_K', 32: 'BF16'}


class GGUFError(ValueError):
    """The file is not a GGUF Ollama accepts; the message is Ollama's."""


@dataclasses.dataclass(frozen=True)
class Header:
    metadata: Dict[str, Any]
    tensors: List[Tuple[str, int]]       # (name, ggml type) in file order
    file_type_offset: int = -1           # where general.file_type's u32 value is (-1: absent)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get('general.architecture', ''))

    @property
    def file_type(self) -> str:
        """Ollama's name of general.file_type ('unknown' when absent)."""
        return FILE_TYPES.get(int(self.metadata.get('general.file_type', -1)), 'unknown')


def read(path: str) -> Header:
    """Read and check a GGUF file's header; GGUFError with Ollama's message when it is bad."""
    with open(path, 'rb') as source:
        source.seek(0, 2)
        size = source.tell()
        source.seek(0)
        if source.read(4) != MAGIC:
            raise GGUFError('invalid file magic')
        try:
            return _read(source, size)
        except struct.error:
            raise GGUFError('unexpected EOF') from None


def _read(source: BinaryIO, size: int) -> Header:
    _unpack(source, '<I')                       # version
    tensor_count, metadata_count = _unpack(source, '<Q'), _unpack(source, '<Q')
    metadata = {}
    file_type_offset = -1
    for _ in range(metadata_count):
        key = _string(source)
        kind = _unpack(source, '<I')
        if key == 'general.file_type' and kind == 4:
            file_type_offset = source.tell()
        metadata[key] = _value(source, kind)
    tensors = []
    ends = []
    for _ in range(tensor_count):
        name = _string(source)
        try:
            dims = _unpack(source, '<I')
            shape = [_unpack(source, '<Q') for _ in range(dims)]
            kind = _unpack(source, '<I')
            offset = _unpack(source, '<Q')
        except struct.error:
            raise GGUFError('failed to read tensor dimensions: unexpected EOF') from None
        tensors.append((name, kind))
        if kind in _BLOCKS:
            elements = 1
            for extent in shape:
                elements *= extent
            per_block, block_bytes = _BLOCKS[kind]
            ends.append((name, offset, elements // per_block * block_bytes))
    alignment = int(metadata.get('general.alignment', 32)) or 32
    data_start = -(-source.tell() // alignment) * alignment
    for name, offset, length in ends:
        if data_start + offset + length > size:
            raise GGUFError(f'tensor "{name}" offset+size ({data_start + offset + length}) '
                            f'exceeds file size ({size})')
    return Header(metadata, tensors, file_type_offset)


def with_file_type(path: str, header: Header, file_type: str) -> bytes:
    """The file's bytes with general.file_type set to `file_type` (an Ollama type name)."""
    code = next(number for number, name in FILE_TYPES.items() if name == file_type)
    with open(path, 'rb') as source:
        data = bytearray(source.read())
    if header.file_type_offset >= 0:
        data[header.file_type_offset:header.file_type_offset + 4] = struct.pack('<I', code)
    return bytes(data)


def _unpack(source: BinaryIO, layout: str) -> Any:
    data = source.read(struct.calcsize(layout))
    return struct.unpack(layout, data)[0]


def _string(source: BinaryIO) -> str:
    length = _unpack(source, '<Q')
    data = source.read(length)
    if len(data) != length:
        raise struct.error('short string')
    return data.decode('utf-8', errors='replace')


def _value(source: BinaryIO, kind: int) -> Any:
    if kind in _SCALARS:
        return _unpack(source, _SCALARS[kind])
    if kind == _STRING:
        return _string(source)
    if kind == _ARRAY:
        item_kind, count = _unpack(source, '<I'), _unpack(source, '<Q')
        if item_kind in _SCALARS and item_kind != _STRING:
            width = struct.calcsize(_SCALARS[item_kind])
            skipped = source.read(width * count)     # token scores, types: not needed
            if len(skipped) != width * count:
                raise struct.error('short array')
            return count
        return [_value(source, item_kind) for _ in range(count)]
    raise GGUFError(f'invalid type: {kind}')
