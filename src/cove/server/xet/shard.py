"""The shard format (MDB shard, header version 2, footer version 1), as far as the CAS needs it.

A shard is a header, a file info section (per file: its hash, its terms as xorb chunk ranges,
one verification hash per term, its sha256), a CAS info section (per xorb: its chunks' hashes,
offsets and sizes), each section closed by a bookend (32 bytes of 0xFF, 16 of 0), then an
optional footer. Every record is 48 bytes; integers are little-endian; hashes are their raw
32 bytes. Clients upload shards (`POST /v1/shards`); the global deduplication query answers
with one that has only a CAS info section, its chunk hashes keyed with a per-answer HMAC key.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field

from cove.server.xet.hashing import keyed

HEADER_TAG = b"HFRepoMetaData\x00" + bytes(
    [85, 105, 103, 69, 106, 123, 129, 87, 131, 165, 189, 217, 92, 205, 209, 74, 169]
)
HEADER_VERSION = 2
FOOTER_VERSION = 1
FOOTER_SIZE = 200
ENTRY = 48
BOOKEND = b"\xff" * 32 + bytes(16)
WITH_VERIFICATION = 1 << 31
WITH_METADATA_EXT = 1 << 30


class ShardError(ValueError):
    """The bytes are not a well-formed shard."""


@dataclass(frozen=True)
class Term:
    """A run of chunks [start, end) of one xorb, `size` bytes once uncompressed."""

    xorb: bytes
    start: int
    end: int
    size: int
    verification: bytes | None = None


@dataclass
class FileInfo:
    hash: bytes
    terms: list[Term]
    sha256: bytes | None = None  # in hash byte order: its string form is the sha256's hex

    @property
    def size(self) -> int:
        return sum(t.size for t in self.terms)


@dataclass
class CasInfo:
    """A xorb as a shard lists it: (chunk hash, byte offset, uncompressed size) per chunk."""

    xorb: bytes
    chunks: list[tuple[bytes, int, int]] = field(default_factory=list)
    num_bytes: int = 0
    num_bytes_on_disk: int = 0


@dataclass
class Shard:
    files: list[FileInfo]
    xorbs: list[CasInfo]


class _Reader:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.body):
            raise ShardError(f"truncated shard: {n} bytes wanted at byte {self.pos}")
        out = self.body[self.pos : self.pos + n]
        self.pos += n
        return out


def parse_shard(body: bytes) -> Shard:
    """The files and xorbs a shard lists; ShardError when its structure is broken."""
    r = _Reader(body)
    tag, version, footer_size = struct.unpack("<32sQQ", r.take(48))
    if tag != HEADER_TAG:
        raise ShardError("not a shard: wrong header tag")
    if version != HEADER_VERSION:
        raise ShardError(f"shard header version {version}, expected {HEADER_VERSION}")
    files = []
    while True:
        record = r.take(ENTRY)
        if record == BOOKEND:
            break
        fhash, flags, count = struct.unpack_from("<32sII", record)
        terms = [_term(r.take(ENTRY)) for _ in range(count)]
        if flags & WITH_VERIFICATION:
            terms = [
                Term(t.xorb, t.start, t.end, t.size, r.take(ENTRY)[:32]) for t in terms
            ]
        sha = r.take(ENTRY)[:32] if flags & WITH_METADATA_EXT else None
        files.append(FileInfo(fhash, terms, sha))
    xorbs = []
    while True:
        record = r.take(ENTRY)
        if record == BOOKEND:
            break
        xhash, _flags, count, num_bytes, on_disk = struct.unpack_from("<32sIIII", record)
        info = CasInfo(xhash, num_bytes=num_bytes, num_bytes_on_disk=on_disk)
        for _ in range(count):
            chash, offset, size = struct.unpack_from("<32sII", r.take(ENTRY))
            info.chunks.append((chash, offset, size))
        xorbs.append(info)
    rest = len(body) - r.pos
    if rest not in (0, footer_size):
        raise ShardError(f"{rest} bytes after the CAS info section, footer size is {footer_size}")
    return Shard(files, xorbs)


def _term(record: bytes) -> Term:
    xorb, _flags, size, start, end = struct.unpack_from("<32sIIII", record)
    if end <= start:
        raise ShardError(f"empty or reversed chunk range [{start}, {end})")
    return Term(xorb, start, end, size)


def dedup_shard(xorbs: list[CasInfo], hmac_key: bytes, ttl: int = 7 * 86400) -> bytes:
    """A shard answering a global deduplication query: `xorbs` with keyed chunk hashes."""
    parts = [struct.pack("<32sQQ", HEADER_TAG, HEADER_VERSION, FOOTER_SIZE), BOOKEND]
    cas_offset = 48 + ENTRY
    for x in xorbs:
        parts.append(struct.pack("<32sIIII", x.xorb, 0, len(x.chunks), x.num_bytes,
                                 x.num_bytes_on_disk))
        for chash, offset, size in x.chunks:
            parts.append(struct.pack("<32sII8x", keyed(hmac_key, chash), offset, size))
    parts.append(BOOKEND)
    footer_offset = sum(len(p) for p in parts)
    now = int(time.time())
    parts.append(struct.pack(
        "<QQQ48x32sQQ72xQ", FOOTER_VERSION, 48, cas_offset, hmac_key, now, now + ttl,
        footer_offset,
    ))
    return b"".join(parts)


def build_shard(files: list[FileInfo], xorbs: list[CasInfo]) -> bytes:
    """An upload shard (no footer), as clients send it: for Cove's tests and tools."""
    parts = [struct.pack("<32sQQ", HEADER_TAG, HEADER_VERSION, 0)]
    for f in files:
        verified = all(t.verification is not None for t in f.terms)
        flags = (WITH_VERIFICATION if verified else 0) | (WITH_METADATA_EXT if f.sha256 else 0)
        parts.append(struct.pack("<32sII8x", f.hash, flags, len(f.terms)))
        parts += [struct.pack("<32sIIII", t.xorb, 0, t.size, t.start, t.end) for t in f.terms]
        if verified:
            parts += [t.verification + bytes(16) for t in f.terms]
        if f.sha256:
            parts.append(f.sha256 + bytes(16))
    parts.append(BOOKEND)
    for x in xorbs:
        parts.append(struct.pack("<32sIIII", x.xorb, 0, len(x.chunks), x.num_bytes,
                                 x.num_bytes_on_disk))
        parts += [struct.pack("<32sII8x", h, o, s) for h, o, s in x.chunks]
    parts.append(BOOKEND)
    return b"".join(parts)
