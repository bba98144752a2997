"""Metadata in SQL through SQLAlchemy: users, organisations, tokens, repositories.

SQLite file by default; any SQLAlchemy URL (e.g. postgresql+psycopg://...) by configuration.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Account(Base):
    """A user or an organisation: both own repositories under their name."""

    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(96), unique=True)
    type: Mapped[str] = mapped_column(String(8), default="user")  # "user" | "org"
    fullname: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Membership(Base):
    __tablename__ = "memberships"
    org_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(8), default="write")  # "read" | "write" | "admin"


class Token(Base):
    """An access token; only its sha256 is stored."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(8))  # "read" | "write"
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    user: Mapped[Account] = relationship()


class Password(Base):
    """A user's web sign-in password, as `auth.hash_password` writes it (salted scrypt).

    A table of its own: `create_all` adds it to existing databases, and accounts without a
    row simply cannot sign in on the pages.
    """

    __tablename__ = "passwords"
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    hash: Mapped[str] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Repository(Base):
    __tablename__ = "repositories"
    __table_args__ = (
        UniqueConstraint("type", "namespace", "name"),
        Index("ix_repo_type_downloads", "type", "downloads"),
        Index("ix_repo_type_likes", "type", "likes"),
        Index("ix_repo_type_modified", "type", "last_modified"),
        Index("ix_repo_type_created", "type", "created_at"),
        # Covers the listings' filters and facet counts (search.py): GROUP BY without
        # reading the rows' JSON columns.
        Index("ix_repo_listing", "type", "private", "namespace", "pipeline_tag", "library_name"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    type: Mapped[str] = mapped_column(String(8))  # "model" | "dataset" | "space"
    namespace: Mapped[str] = mapped_column(String(96))
    name: Mapped[str] = mapped_column(String(96))
    # Folder of the git repository: stable across renames, so a move is one SQL update.
    storage_key: Mapped[str] = mapped_column(String(32), unique=True)
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    sdk: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_modified: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # Facts of the main branch, refreshed at each commit to it (and checked at start-up).
    sha: Mapped[str | None] = mapped_column(String(40), nullable=True)
    card_data: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    tags: Mapped[list] = mapped_column(JSON, default=list)
    pipeline_tag: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    library_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    downloads: Mapped[int] = mapped_column(Integer, default=0)
    likes: Mapped[int] = mapped_column(Integer, default=0)

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.name}"


class RepoTag(Base):
    """One row per (repository, tag), so list filters are indexed lookups."""

    __tablename__ = "repo_tags"
    repo_id: Mapped[int] = mapped_column(
        ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(200), primary_key=True, index=True)


class SpaceSetting(Base):
    """A Space's runner settings (server/spaces/): its sleep time and whether its owner paused
    it. A table of its own, so `create_all` adds it to existing databases."""

    __tablename__ = "space_settings"
    repo_id: Mapped[int] = mapped_column(
        ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True
    )
    sleep_time: Mapped[int | None] = mapped_column(Integer, nullable=True)  # seconds
    paused: Mapped[bool] = mapped_column(Boolean, default=False)


class SpaceVariable(Base):
    """A Space's variable or secret (`kind`), given to its app as an environment variable.

    Secret values are never answered by the API; they live here as the data folder's other
    credentials do (readable by the server only).
    """

    __tablename__ = "space_variables"
    repo_id: Mapped[int] = mapped_column(
        ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)  # "variable" | "secret"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[str] = mapped_column(Text, default="")
    description: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record):  # WAL: readers never wait for the writer
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
    else:
        engine = create_engine(url, pool_pre_ping=True)
    Base.metadata.create_all(engine)
    # create_all makes a missing table with its indexes, not an index added to an existing
    # table later: those are created here, so older data folders get them too.
    for table in Base.metadata.sorted_tables:
        for index in table.indexes:
            index.create(engine, checkfirst=True)
    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "hf_cove_" + secrets.token_urlsafe(30)
