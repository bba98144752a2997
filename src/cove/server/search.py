"""Repository search for the listings (API and pages): filters, visibility, facet counts.

Everything is SQL on indexed columns and the `repo_tags` table, LIMIT/OFFSET and GROUP BY:
no git access. A page's total and facet counts (GROUP BY over every matching repository, the
costly part with 10,000 of them) are cached until the database's next commit, see `summary`.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import astuple, dataclass, field
from weakref import WeakKeyDictionary

from sqlalchemy import Select, event, func, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from cove.server.db import Repository, RepoTag
from cove.server.hub import Principal

# Tag prefixes that make a facet of their own, as the Hub's filters (the rest: "other").
FACET_PREFIXES = {"license": "license:", "language": "language:",
                  "task_categories": "task_categories:"}


@dataclass
class RepoQuery:
    """Which repositories of one type a caller asks for, all conditions ANDed."""

    repo_type: str
    who: Principal | None = None
    search: list[str] = field(default_factory=list)  # parts of the id, any case
    author: str | None = None
    tags: list[str] = field(default_factory=list)
    pipeline_tag: str | None = None
    library: str | None = None

    def conditions(self) -> list:
        visible = [self.who.name, *self.who.orgs] if self.who else []
        out = [
            Repository.type == self.repo_type,
            or_(Repository.private.is_(False), Repository.namespace.in_(visible)),
        ]
        if self.author:
            out.append(Repository.namespace == self.author)
        for term in self.search:
            pattern = f"%{term.lower()}%"
            out.append(func.lower(Repository.namespace + "/" + Repository.name).like(pattern))
        if self.pipeline_tag and self.repo_type == "model":
            out.append(Repository.pipeline_tag == self.pipeline_tag)
        if self.library:
            out.append(Repository.library_name == self.library)
        for tag in self.tags:
            out.append(Repository.id.in_(select(RepoTag.repo_id).where(RepoTag.tag == tag)))
        return out

    def select(self) -> Select:
        return select(Repository).where(*self.conditions())


def count(s: Session, q: RepoQuery) -> int:
    return s.scalar(select(func.count()).select_from(Repository).where(*q.conditions())) or 0


def facets(s: Session, q: RepoQuery, top: int = 12) -> tuple[int, dict[str, list[tuple[str, int]]]]:
    """How many repositories `q` finds, and the most frequent values of each facet among them
    with counts: task (pipeline_tag, or a dataset's task_categories), library, license,
    language, other. Two GROUP BY queries: one over the columns (whose sum is the total), one
    over the tags."""
    conditions = q.conditions()
    pairs = s.execute(
        select(Repository.pipeline_tag, Repository.library_name, func.count())
        .where(*conditions).group_by(Repository.pipeline_tag, Repository.library_name)
    ).all()
    tasks: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    for task, library, n in pairs:
        if task:
            tasks[task] += n
        if library:
            libraries[library] += n
    tag_rows = s.execute(
        select(RepoTag.tag, func.count())
        .where(RepoTag.repo_id.in_(select(Repository.id).where(*conditions)))
        .group_by(RepoTag.tag).order_by(func.count().desc(), RepoTag.tag)
    ).all()

    def ranked(counts: Counter[str]) -> list[tuple[str, int]]:
        return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]

    out: dict[str, list[tuple[str, int]]] = {name: [] for name in FACET_PREFIXES}
    out["library"] = ranked(libraries)
    out["task"] = ranked(tasks) if q.repo_type == "model" else []
    # A model's language, library and task are also plain tags: "other" leaves them out.
    known = set(tasks) | set(libraries)
    languages = set()
    other = []
    for tag, n in tag_rows:
        prefix = next((k for k, p in FACET_PREFIXES.items() if tag.startswith(p)), None)
        if prefix is not None:
            value = tag[len(FACET_PREFIXES[prefix]):]
            if prefix == "language":
                languages.add(value)
            if len(out[prefix]) < top:
                out[prefix].append((value, n))
        elif ":" not in tag:
            other.append((tag, n))
    out["other"] = [(t, n) for t, n in other if t not in known and t not in languages][:top]
    task_categories = out.pop("task_categories")
    if q.repo_type != "model":
        out["task"] = task_categories
    return sum(n for *_, n in pairs), out


# Commits seen per engine: any commit may change what a listing finds, so it empties the cache.
# Counted twice, as a commit starts (the engine's event) and once it has landed (the
# session's): a listing computed in between may have read the old rows, and is cached under
# a count that the landing moves past. A TTL covers writers in other processes (`cove admin`,
# a second worker).
_COMMITS: WeakKeyDictionary[Engine, list[int]] = WeakKeyDictionary()
_CACHE: dict[tuple, tuple[float, tuple[int, dict]]] = {}
CACHE_TTL = 60.0
_CACHE_MAX = 1024


def _bump(bind: object) -> None:
    box = _COMMITS.get(bind)  # type: ignore[call-overload]
    if box is not None:
        box[0] += 1


@event.listens_for(Session, "after_commit")
def _landed(session: Session) -> None:
    _bump(session.bind)


def _commits(engine: Engine) -> int:
    box = _COMMITS.get(engine)
    if box is None:
        box = _COMMITS[engine] = [0]
        event.listen(engine, "commit", lambda conn: _bump(conn.engine))
    return box[0]


def summary(s: Session, q: RepoQuery) -> tuple[int, dict[str, list[tuple[str, int]]]]:
    """`facets` of `q` (its total and counts), computed once per database state (and at
    least every CACHE_TTL seconds)."""
    engine = s.get_bind()
    visible = tuple([q.who.name, *q.who.orgs]) if q.who else ()
    key = (id(engine), _commits(engine), visible,
           *(tuple(v) if isinstance(v, list) else v for v in astuple(q)[2:]), q.repo_type)
    hit = _CACHE.get(key)
    now = time.monotonic()
    if hit is not None and now - hit[0] < CACHE_TTL:
        return hit[1]
    value = facets(s, q)
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.clear()
    _CACHE[key] = (now, value)
    return value
