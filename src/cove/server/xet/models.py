"""The Xet file index in SQL: xorbs (their bytes are in the object store), chunks, files.

On the Hub's `Base`, so `create_all` adds these tables to existing databases at start-up.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from cove.server.db import Base, utcnow


class XetXorb(Base):
    """A verified xorb: the object holding its bytes and its chunk table."""

    __tablename__ = "xet_xorbs"
    hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # the spec's string form
    object_oid: Mapped[str] = mapped_column(String(64))  # sha256 of the bytes in the store
    size: Mapped[int] = mapped_column(BigInteger)
    # Per chunk, packed: raw hash (32 bytes), header offset and uncompressed size (u32 LE each).
    chunks: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class XetChunk(Base):
    """Global deduplication: which xorb holds a chunk."""

    __tablename__ = "xet_chunks"
    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    xorb: Mapped[str] = mapped_column(String(64))


class XetFile(Base):
    """A file's reconstruction: its terms `[[xorb, start, end, size], ...]`, in order."""

    __tablename__ = "xet_files"
    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    terms: Mapped[list] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class XetRepoFile(Base):
    """Files a repository may read through CAS: uploaded with its write token, or committed."""

    __tablename__ = "xet_repo_files"
    repo_id: Mapped[int] = mapped_column(
        ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True
    )
    file_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
