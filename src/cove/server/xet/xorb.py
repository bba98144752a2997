"""The xorb format: a sequence of chunks, each an 8-byte header and its (compressed) bytes.

Header: version (0), compressed size (3 bytes LE), compression scheme, uncompressed size
(3 bytes LE). Schemes: 0 none, 1 LZ4, 2 byte-grouping by 4 then LZ4. hf_xet writes LZ4 as
LZ4 frames; a bare LZ4 block is read too. A xorb is at most 64 MiB serialized and a chunk at
most 128 KiB uncompressed. Parsing verifies every chunk's hash (over its uncompressed bytes)
and, against the name it was uploaded under, the xorb hash.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import lz4.block
import lz4.frame
import numpy as np

from cove.server.xet.hashing import MAX_CHUNK, chunk_hash, merkle_root

HEADER = 8
# The spec's 64 MiB bounds a xorb's chunk data; hf_xet fills xorbs to 64 MiB of incompressible
# chunks and adds 8 bytes of header per chunk (at most 8192 chunks): room for those headers.
MAX_XORB_BYTES = 64 * 1024 * 1024 + 8192 * HEADER
NONE, LZ4, BG4_LZ4 = 0, 1, 2
_LZ4_FRAME_MAGIC = b"\x04\x22\x4d\x18"


class XorbError(ValueError):
    """The bytes are not a well-formed xorb, or not the xorb they claim to be."""


@dataclass(frozen=True)
class ChunkInfo:
    """Where a chunk lies in its xorb and what it hashes to."""

    hash: bytes
    offset: int  # of its header in the serialized xorb
    size: int  # uncompressed


def _lz4_decompress(data: bytes, size: int) -> bytes:
    if data.startswith(_LZ4_FRAME_MAGIC):
        return lz4.frame.decompress(data)
    return lz4.block.decompress(data, uncompressed_size=size)


def _bg4_split(data: bytes) -> bytes:
    """Byte grouping: bytes 0, 4, 8... then 1, 5, 9... (the first groups take the rest)."""
    a = np.frombuffer(data, dtype=np.uint8)
    return b"".join(a[i::4].tobytes() for i in range(4))


def _bg4_join(grouped: bytes) -> bytes:
    n = len(grouped)
    out = np.empty(n, dtype=np.uint8)
    src = np.frombuffer(grouped, dtype=np.uint8)
    pos = 0
    for i in range(4):
        count = n // 4 + (1 if i < n % 4 else 0)
        out[i::4] = src[pos : pos + count]
        pos += count
    return out.tobytes()


def decode_chunk(scheme: int, data: bytes, size: int) -> bytes:
    """A chunk's uncompressed bytes; XorbError when they do not decode to `size` bytes."""
    try:
        if scheme == NONE:
            raw = data
        elif scheme == LZ4:
            raw = _lz4_decompress(data, size)
        elif scheme == BG4_LZ4:
            raw = _bg4_join(_lz4_decompress(data, size))
        else:
            raise XorbError(f"unknown compression scheme {scheme}")
    except XorbError:
        raise
    except Exception as e:  # lz4 raises its own error types (and RuntimeError) on bad input
        raise XorbError(f"chunk does not decompress: {e}") from None
    if len(raw) != size:
        raise XorbError(f"chunk decompresses to {len(raw)} bytes, its header says {size}")
    return raw


def encode_chunk(raw: bytes, scheme: int) -> bytes:
    """A chunk serialized with `scheme` (header and data)."""
    if scheme == NONE:
        data = raw
    elif scheme == LZ4:
        data = lz4.frame.compress(raw)
    elif scheme == BG4_LZ4:
        data = lz4.frame.compress(_bg4_split(raw))
    else:
        raise ValueError(f"unknown compression scheme {scheme}")
    return _header(len(data), scheme, len(raw)) + data


def _header(compressed: int, scheme: int, size: int) -> bytes:
    return bytes([0]) + compressed.to_bytes(3, "little") + bytes([scheme]) + size.to_bytes(3, "little")


def iter_chunks(body: bytes, start: int = 0):
    """(header offset, scheme, compressed bytes, uncompressed size) of each chunk in `body`."""
    pos = start
    while pos < len(body):
        if len(body) - pos < HEADER:
            raise XorbError(f"truncated chunk header at byte {pos}")
        version, c0, c1, c2, scheme = struct.unpack_from("<B3BB", body, pos)
        if version != 0:
            raise XorbError(f"chunk header version {version} at byte {pos}, expected 0")
        compressed = c0 | c1 << 8 | c2 << 16
        size = int.from_bytes(body[pos + 5 : pos + 8], "little")
        end = pos + HEADER + compressed
        if end > len(body):
            raise XorbError(f"chunk at byte {pos} runs past the end of the xorb")
        yield pos, scheme, body[pos + HEADER : end], size
        pos = end


def parse_xorb(body: bytes, expected: bytes | None = None) -> list[ChunkInfo]:
    """The chunks of a serialized xorb, every hash verified; XorbError when anything is off.

    `expected` is the xorb hash the upload named: the Merkle root of the chunks must equal it.
    """
    if len(body) > MAX_XORB_BYTES:
        raise XorbError(f"xorb of {len(body)} bytes exceeds the {MAX_XORB_BYTES} byte limit")
    chunks = []
    for offset, scheme, data, size in iter_chunks(body):
        if size == 0 or size > MAX_CHUNK:
            raise XorbError(f"chunk of {size} bytes at byte {offset} (1 to {MAX_CHUNK} allowed)")
        chunks.append(ChunkInfo(chunk_hash(decode_chunk(scheme, data, size)), offset, size))
    if not chunks:
        raise XorbError("empty xorb")
    if expected is not None:
        if merkle_root([(c.hash, c.size) for c in chunks]) != expected:
            raise XorbError("the xorb's hash does not match its chunks")
    return chunks


def build_xorb(chunks: list[bytes], scheme: int = NONE) -> bytes:
    """A serialized xorb of raw `chunks` (for Cove's own tests and tools)."""
    return b"".join(encode_chunk(c, scheme) for c in chunks)
