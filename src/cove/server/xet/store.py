"""The Xet file index and xorb storage behind the Hub's object store.

A xorb is verified whole (format, every chunk hash, the xorb hash) before anything is
written; its bytes then go through the object store's `begin`/`commit` under their sha256
(atomic, so a crash leaves nothing visible), and only then does its SQL row appear, so a xorb
is served only once it is complete. A shard's files are checked against stored xorbs (ranges,
sizes, verification hashes, the file hash, and the sha256 by reading the file back) and
recorded in one transaction.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from cove.server.xet.hashing import file_hash, hash_to_str, str_to_hash, verification_hash
from cove.server.xet.models import XetChunk, XetFile, XetRepoFile, XetXorb
from cove.server.xet.shard import CasInfo, ShardError, dedup_shard, parse_shard
from cove.server.xet.xorb import ChunkInfo, decode_chunk, iter_chunks, parse_xorb

_CHUNK_ROW = struct.Struct("<32sII")
READ_BATCH = 4 * 1024 * 1024  # bytes of a xorb read at once when streaming a file


class MissingXorb(ShardError):
    """A shard names a xorb that was never uploaded."""


@dataclass(frozen=True)
class StoredXorb:
    hash: str
    object_oid: str
    size: int
    chunks: list[ChunkInfo]

    def byte_range(self, start: int, end: int) -> tuple[int, int]:
        """The serialized bytes [first, last] (inclusive) of chunks [start, end)."""
        last = self.chunks[end].offset if end < len(self.chunks) else self.size
        return self.chunks[start].offset, last - 1


# (xorb, first chunk, end chunk, uncompressed bytes) of a run of chunks a file needs.
Run = tuple[StoredXorb, int, int, int]


def cas_entries(chunks: list[ChunkInfo]) -> list[tuple[bytes, int, int]]:
    """A xorb's chunks as a shard's CAS info lists them: (hash, offset, size), the offset
    counted in uncompressed bytes (as hf_xet writes it), not in the serialized xorb."""
    out, offset = [], 0
    for c in chunks:
        out.append((c.hash, offset, c.size))
        offset += c.size
    return out


def _pack(chunks: list[ChunkInfo]) -> bytes:
    return b"".join(_CHUNK_ROW.pack(c.hash, c.offset, c.size) for c in chunks)


def _unpack(blob: bytes) -> list[ChunkInfo]:
    return [ChunkInfo(*row) for row in _CHUNK_ROW.iter_unpack(blob)]


class XetStore:
    """Xorbs, files and their reconstructions, on the Hub's object store and SQL."""

    def __init__(self, hub) -> None:
        self.hub = hub

    # -- xorbs -----------------------------------------------------------------------------
    def xorb(self, xorb_hash: str) -> StoredXorb | None:
        with self.hub.session() as s:
            row = s.get(XetXorb, xorb_hash)
            if row is None:
                return None
            return StoredXorb(row.hash, row.object_oid, row.size, _unpack(row.chunks))

    def put_xorb(self, raw_hash: bytes, body: bytes) -> bool:
        """Verify and store a xorb; False when it was already stored. XorbError if invalid."""
        name = hash_to_str(raw_hash)
        if self.xorb(name) is not None:
            return False
        chunks = parse_xorb(body, expected=raw_hash)
        oid = hashlib.sha256(body).hexdigest()
        if self.hub.objects.size(oid) != len(body):
            pending = self.hub.objects.begin(oid, len(body))
            try:
                pending.write(body)
                pending.commit()
            except BaseException:
                pending.abort()
                raise
        # The xorb and its chunks in the dedup index appear together, in one transaction.
        with self.hub.session() as s:
            s.add(XetXorb(hash=name, object_oid=oid, size=len(body), chunks=_pack(chunks)))
            for c in chunks:
                s.merge(XetChunk(hash=hash_to_str(c.hash), xorb=name))
            try:
                s.commit()
            except IntegrityError:  # the same xorb, uploaded at the same time by another
                return False
        return True

    def read_xorb_range(self, xorb: StoredXorb, first: int, last: int) -> bytes:
        """Serialized bytes [first, last] of a stored xorb."""
        with self.hub.objects.open(xorb.object_oid) as f:
            f.seek(first)
            return f.read(last - first + 1)

    # -- deduplication ---------------------------------------------------------------------
    def dedup(self, raw_chunk_hash: bytes) -> bytes | None:
        """The shard answering a global dedup query for a chunk, or None when unknown."""
        with self.hub.session() as s:
            row = s.get(XetChunk, hash_to_str(raw_chunk_hash))
        xorb = self.xorb(row.xorb) if row else None
        if xorb is None:
            return None
        info = CasInfo(
            xorb=str_to_hash(xorb.hash),
            chunks=cas_entries(xorb.chunks),
            num_bytes=sum(c.size for c in xorb.chunks),
            num_bytes_on_disk=xorb.size,
        )
        return dedup_shard([info], secrets.token_bytes(32))

    # -- files -----------------------------------------------------------------------------
    def put_shard(self, body: bytes, repo_id: int) -> int:
        """Register a shard's files for `repo_id`: 1 when something was new, else 0.

        ShardError (MissingXorb for an unknown xorb) when it does not hold up.
        """
        shard = parse_shard(body)
        xorbs: dict[bytes, StoredXorb] = {}

        def stored(raw: bytes) -> StoredXorb:
            if raw not in xorbs:
                found = self.xorb(hash_to_str(raw))
                if found is None:
                    raise MissingXorb(f"xorb {hash_to_str(raw)} was not uploaded")
                xorbs[raw] = found
            return xorbs[raw]

        for info in shard.xorbs:
            if info.chunks != cas_entries(stored(info.xorb).chunks):
                raise ShardError(f"the CAS info of xorb {hash_to_str(info.xorb)} does not "
                                 "match the stored xorb")
        records = []
        for f in shard.files:
            chunks: list[tuple[bytes, int]] = []
            terms = []
            for t in f.terms:
                x = stored(t.xorb)
                if t.end > len(x.chunks):
                    raise ShardError(f"chunk range [{t.start}, {t.end}) outside xorb {x.hash}")
                run = x.chunks[t.start : t.end]
                if sum(c.size for c in run) != t.size:
                    raise ShardError(f"term of xorb {x.hash} claims {t.size} bytes")
                if t.verification is None or t.verification != verification_hash(
                    c.hash for c in run
                ):
                    raise ShardError(f"term verification of xorb {x.hash} failed")
                chunks += [(c.hash, c.size) for c in run]
                terms.append([x.hash, t.start, t.end, t.size])
            name = hash_to_str(f.hash)
            if file_hash(chunks) != f.hash:
                raise ShardError(f"file hash {name} does not match its chunks")
            sha = hashlib.sha256()
            for piece in self._stream(terms, 0, f.size):
                sha.update(piece)
            # hf_xet stores the sha256 as it stores hashes (8-byte words, little-endian).
            if f.sha256 is not None and hash_to_str(f.sha256) != sha.hexdigest():
                raise ShardError(f"the sha256 of file {name} does not match its content")
            records.append(XetFile(hash=name, sha256=sha.hexdigest(), size=f.size, terms=terms))
        new = 0
        with self.hub.session() as s:
            for rec in records:
                if s.get(XetFile, rec.hash) is None and s.scalar(
                    select(XetFile.hash).where(XetFile.sha256 == rec.sha256)
                ) is None:
                    s.add(rec)
                    new = 1
                if s.get(XetRepoFile, (repo_id, rec.hash)) is None:
                    s.add(XetRepoFile(repo_id=repo_id, file_hash=rec.hash))
                    new = 1
            s.commit()
        return new

    def file(self, name: str) -> XetFile | None:
        with self.hub.session() as s:
            return s.get(XetFile, name)

    def file_by_sha256(self, sha256: str) -> XetFile | None:
        with self.hub.session() as s:
            return s.scalar(select(XetFile).where(XetFile.sha256 == sha256))

    def files_by_sha256(self, oids: list[str]) -> dict[str, str]:
        """sha256 -> file hash, for those of `oids` stored through Xet."""
        if not oids:
            return {}
        with self.hub.session() as s:
            rows = s.execute(select(XetFile.sha256, XetFile.hash).where(XetFile.sha256.in_(oids)))
            return dict(rows.all())

    def grant(self, repo_id: int, name: str) -> None:
        """Let `repo_id` read file `name` through CAS (it was committed to the repository)."""
        with self.hub.session() as s:
            if s.get(XetRepoFile, (repo_id, name)) is None:
                s.add(XetRepoFile(repo_id=repo_id, file_hash=name))
                try:
                    s.commit()
                except IntegrityError:
                    pass

    def readable(self, repo_id: int, name: str) -> bool:
        with self.hub.session() as s:
            return s.get(XetRepoFile, (repo_id, name)) is not None

    # -- reconstruction --------------------------------------------------------------------
    def plan(self, terms: list[list], start: int, end: int) -> tuple[int, list[Run]]:
        """The chunk runs covering file bytes [start, end), and the offset of `start` into
        the first run."""
        runs = []
        skip = 0
        pos = 0  # file offset of the current chunk
        xorbs: dict[str, StoredXorb] = {}  # a deduplicated file names the same xorbs often
        for xorb_name, t_start, t_end, t_size in terms:
            if pos + t_size <= start:
                pos += t_size
                continue
            if pos >= end:
                break
            if xorb_name not in xorbs:
                xorbs[xorb_name] = self.xorb(xorb_name)
            x = xorbs[xorb_name]
            first = None
            size = 0
            last = t_start
            for i in range(t_start, t_end):
                c = x.chunks[i]
                if pos + c.size > start and pos < end:
                    if first is None:
                        first = i
                        if not runs:
                            skip = start - pos
                    size += c.size
                    last = i + 1
                pos += c.size
            if first is not None:
                runs.append((x, first, last, size))
        return skip, runs

    def _stream(self, terms: list[list], start: int, end: int) -> Iterator[bytes]:
        """The file's bytes [start, end), decoded chunk by chunk from the xorbs."""
        skip, runs = self.plan(terms, start, end)
        left = end - start
        for x, first, last, _ in runs:
            i = first
            while i < last and left > 0:
                # Read a batch of whole chunks in one go.
                j = i + 1
                while j < last and x.chunks[j].offset - x.chunks[i].offset < READ_BATCH:
                    j += 1
                lo, hi = x.byte_range(i, j)
                data = self.read_xorb_range(x, lo, hi)
                for _, scheme, payload, size in iter_chunks(data):
                    raw = decode_chunk(scheme, payload, size)
                    if skip:
                        raw, skip = raw[skip:], max(skip - len(raw), 0)
                    if raw:
                        piece = raw[:left]
                        left -= len(piece)
                        yield piece
                i = j

    def stream(self, f: XetFile, start: int, length: int) -> Iterator[bytes]:
        """`length` bytes of file `f` from `start`."""
        return self._stream(f.terms, start, start + length)

