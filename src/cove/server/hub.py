"""The Hub's state and rules: repositories, access, commits, consistency after a crash.

Routers stay thin; everything that touches both git and SQL goes through `Hub`, which keeps
them consistent: a git repository lives in a folder named by a storage key, the SQL row points
to it, and `recover()` at start-up mends whatever a crash left between the two.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cove.server import errors
from cove.server.cards import card_facts
from cove.server.config import DEFAULT_LFS_PATTERNS, Settings
from cove.server.db import (
    Account,
    Membership,
    Repository,
    RepoTag,
    Token,
    hash_token,
    make_engine,
    make_sessionmaker,
    utcnow,
)
from cove.server.gitrepo import GitRepo, PathConflict, RefConflict
from cove.server.storage import LocalObjectStore, ObjectStore
from cove.server.xet.store import XetStore

log = logging.getLogger("cove.server")

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# Names that would collide with routes of the server.
RESERVED = {
    "api", "datasets", "spaces", "models", "settings", "new", "new-dataset", "login", "logout",
    "join", "static",
}


def validate_name(part: str, what: str) -> None:
    if not _NAME.match(part) or part.endswith((".", "-")) or "--" in part or ".." in part:
        raise errors.bad_request(
            f"Invalid {what} {part!r}: use letters, digits, '-', '_' and '.', at most 96 "
            "characters, not starting or ending with '-' or '.', without '--' or '..'.",
            code="InvalidRepoName",
        )
    if part.endswith(".git"):
        raise errors.bad_request(f"Invalid {what} {part!r}: it cannot end with '.git'")


@dataclass
class Principal:
    """Who is calling: an account and the role of the token it used."""

    account: Account
    role: str  # "read" | "write"
    token_name: str
    orgs: list[str]
    writable_orgs: list[str]

    @property
    def name(self) -> str:
        return self.account.name


class Hub:
    def __init__(self, settings: Settings, objects: ObjectStore | None = None) -> None:
        self.settings = settings
        self.engine = make_engine(settings.database_url)
        self.sessions = make_sessionmaker(self.engine)
        self.objects: ObjectStore = objects or LocalObjectStore(settings.lfs_dir)
        self.xet = XetStore(self)  # Xet files and xorbs, on the same object store
        self.settings.repos_dir.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._recent_downloads: dict[tuple[str, int], float] = {}
        # Called with (repository, new head) whenever main moves (`refresh_main`): the Space
        # runner (server/spaces/) restarts a Space on its new code. Listeners must not block.
        self.main_listeners: list[Callable[[Repository, str], None]] = []

    # -- sessions and locks --------------------------------------------------------------
    @contextmanager
    def session(self):
        with self.sessions() as s:
            yield s

    @contextmanager
    def write_lock(self, repo: Repository):
        """One writer per repository at a time (git object writes take file locks)."""
        with self._locks_guard:
            lock = self._locks.setdefault(repo.storage_key, threading.Lock())
        # The file lock also keeps out writers in other processes (several workers, tools).
        path = self.git_path(repo.storage_key)
        with lock, FileLock(str(path.with_name(path.name + ".writelock"))):
            yield

    def git_path(self, key: str) -> Path:
        return self.settings.repos_dir / key[:2] / f"{key}.git"

    def git(self, repo: Repository) -> GitRepo:
        return GitRepo(self.git_path(repo.storage_key))

    # -- authentication ------------------------------------------------------------------
    def principal_for_token(self, token: str) -> Principal | None:
        with self.session() as s:
            row = s.scalar(select(Token).where(Token.hash == hash_token(token)))
            if row is None:
                return None
            return self._principal(s, row.user, row.role, row.name)

    def principal_for_account(self, account_id: int) -> Principal | None:
        """A signed-in web session's caller: the user with write rights, as a write token."""
        with self.session() as s:
            account = s.get(Account, account_id)
            if account is None or account.type != "user":
                return None
            return self._principal(s, account, "write", "web session")

    @staticmethod
    def _principal(s: Session, account: Account, role: str, token_name: str) -> Principal:
        orgs = s.execute(
            select(Account.name, Membership.role)
            .join(Membership, Membership.org_id == Account.id)
            .where(Membership.user_id == account.id)
        ).all()
        return Principal(
            account=account,
            role=role,
            token_name=token_name,
            orgs=[o for o, _ in orgs],
            writable_orgs=[o for o, r in orgs if r in ("write", "admin")],
        )

    # -- access rules --------------------------------------------------------------------
    @staticmethod
    def can_read(repo: Repository, who: Principal | None) -> bool:
        if not repo.private:
            return True
        return who is not None and (who.name == repo.namespace or repo.namespace in who.orgs)

    @staticmethod
    def owns_namespace(namespace: str, who: Principal) -> bool:
        return who.name == namespace or namespace in who.writable_orgs

    def check_write(self, namespace: str, who: Principal | None, repo_id: str) -> None:
        if who is None:
            raise errors.unauthorized("You must use a write token to write to the Hub.")
        if who.role != "write":
            raise errors.forbidden(
                f"Your token ({who.token_name!r}) is read-only: write access to {repo_id} "
                "needs a token with the 'write' role."
            )
        if not self.owns_namespace(namespace, who):
            raise errors.forbidden(f"You don't have the rights to write to {repo_id}.")

    def find_repo(
        self, s: Session, repo_type: str, repo_id: str, who: Principal | None, write: bool = False
    ) -> Repository:
        """The repository, or RepoNotFound when it is missing or hidden from `who`."""
        namespace, _, name = repo_id.rpartition("/")
        repo = s.scalar(
            select(Repository).where(
                Repository.type == repo_type,
                Repository.namespace == namespace,
                Repository.name == name,
            )
        )
        if repo is None or not self.can_read(repo, who):
            raise errors.repo_not_found(repo_id)
        if write:
            self.check_write(namespace, who, repo_id)
        return repo

    # -- repositories --------------------------------------------------------------------
    def create_repo(
        self,
        repo_type: str,
        namespace: str,
        name: str,
        who: Principal,
        private: bool,
        sdk: str | None = None,
    ) -> Repository:
        validate_name(name, "repository name")
        repo_id = f"{namespace}/{name}"
        self.check_write(namespace, who, repo_id)
        with self.session() as s:
            existing = s.scalar(
                select(Repository.id).where(
                    Repository.type == repo_type,
                    Repository.namespace == namespace,
                    Repository.name == name,
                )
            )
            if existing is not None:
                raise errors.conflict(f"You already created this {repo_type} repo: {repo_id}")
            if s.scalar(select(Account.id).where(Account.name == namespace)) is None:
                raise errors.bad_request(f"Namespace {namespace!r} does not exist.")
        key = uuid.uuid4().hex
        # Build the git repository in a staging folder and move it in whole: a crash leaves
        # either nothing or a complete repository (removed by recover() if no row names it).
        staging = self.settings.repos_dir / "staging" / f"{key}.git"
        staging.parent.mkdir(parents=True, exist_ok=True)
        git = GitRepo.init(staging)
        attributes = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in DEFAULT_LFS_PATTERNS)
        sha = git.write_commit(
            "main", [(".gitattributes", attributes.encode())], [], "initial commit",
            self.author(who), None,
        )
        git.close()
        final = self.git_path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, final)
        now = utcnow()
        repo = Repository(
            type=repo_type, namespace=namespace, name=name, storage_key=key, private=private,
            sdk=sdk, created_at=now, last_modified=now, sha=sha, tags=[], downloads=0, likes=0,
        )
        with self.session() as s:
            s.add(repo)
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                shutil.rmtree(final, ignore_errors=True)
                raise errors.conflict(f"You already created this {repo_type} repo: {repo_id}") from None
        return repo

    def delete_repo(self, repo: Repository) -> None:
        with self.session() as s:
            s.execute(delete(RepoTag).where(RepoTag.repo_id == repo.id))
            s.execute(delete(Repository).where(Repository.id == repo.id))
            s.commit()
        # The row is gone, so the folder is unreachable; a crash here leaves an orphan that
        # recover() removes.
        path = self.git_path(repo.storage_key)
        shutil.rmtree(path, ignore_errors=True)
        path.with_name(path.name + ".writelock").unlink(missing_ok=True)

    def move_repo(self, repo: Repository, new_id: str, who: Principal) -> None:
        namespace, _, name = new_id.rpartition("/")
        validate_name(name, "repository name")
        self.check_write(namespace, who, new_id)
        with self.session() as s:
            row = s.get(Repository, repo.id)
            row.namespace, row.name = namespace, name
            try:
                s.commit()
            except IntegrityError:
                raise errors.conflict(f"Repository {new_id} already exists.") from None

    def set_private(self, repo: Repository, private: bool) -> None:
        with self.session() as s:
            s.get(Repository, repo.id).private = private
            s.commit()

    @staticmethod
    def author(who: Principal | None) -> str:
        name = who.name if who else "cove"
        email = (who.account.email if who else None) or f"{name}@users.noreply.cove"
        return f"{name} <{email}>"

    # -- commits -------------------------------------------------------------------------
    def commit(
        self,
        repo: Repository,
        branch: str,
        changes: list[tuple[str, bytes | None]],
        deleted_folders: list[str],
        message: str,
        who: Principal,
        parent: str | None,
    ) -> str:
        with self.write_lock(repo):
            git = self.git(repo)
            try:
                if f"refs/heads/{branch}" not in git.refs("refs/heads/"):
                    raise errors.revision_not_found(repo.repo_id, branch)
                try:
                    sha = git.write_commit(
                        branch, changes, deleted_folders, message, self.author(who), parent
                    )
                except PathConflict as e:
                    raise errors.conflict(f"{e} (in {repo.repo_id}@{branch}).") from None
                except RefConflict:
                    since = f" since {parent}: the parent commit is stale" if parent else ""
                    raise errors.HubError(
                        412,
                        "PreconditionFailed",
                        f"A commit has happened on {branch}{since}. Fetch the latest revision "
                        "and try again.",
                    ) from None
                if branch == "main":
                    self.refresh_main(repo, git, sha)
                return sha
            finally:
                git.close()

    def refresh_main(self, repo: Repository, git: GitRepo, sha: str) -> None:
        """Store the main branch's facts (head, card, tags) in SQL for info and listings."""
        entry = git.entry(sha, "README.md")
        readme = git.read_blob(entry.oid) if entry and entry.type == "file" else None
        facts = card_facts(readme, repo.type)
        with self.session() as s:
            row = s.get(Repository, repo.id)
            if row is None:
                return
            row.sha = sha
            row.last_modified = utcnow()
            row.card_data = facts.card_data
            row.tags = facts.tags
            row.pipeline_tag = facts.pipeline_tag
            row.library_name = facts.library_name
            s.execute(delete(RepoTag).where(RepoTag.repo_id == repo.id))
            s.add_all(RepoTag(repo_id=repo.id, tag=t) for t in facts.tags)
            s.commit()
        for listener in self.main_listeners:
            try:
                listener(repo, sha)
            except Exception:  # a listener's failure must not fail the commit that is done
                log.exception("main-branch listener failed for %s", repo.repo_id)

    # -- downloads -----------------------------------------------------------------------
    def count_download(self, repo: Repository, path: str, client: str) -> None:
        """One download per client and repository in a 5-minute window, as the Hub counts.

        Models count on config.json or a weights file, datasets on any file; spaces not at all.
        """
        if repo.type == "space":
            return
        if repo.type == "model" and not (
            path == "config.json" or path.endswith(_WEIGHT_SUFFIXES)
        ):
            return
        now = time.monotonic()
        key = (client, repo.id)
        last = self._recent_downloads.get(key)
        if last is not None and now - last < 300:
            return
        if len(self._recent_downloads) > 100_000:
            self._recent_downloads = {
                k: t for k, t in self._recent_downloads.items() if now - t < 300
            }
        self._recent_downloads[key] = now
        with self.session() as s:
            row = s.get(Repository, repo.id)
            if row is not None:
                row.downloads += 1
                s.commit()

    # -- crash recovery ------------------------------------------------------------------
    def recover(self) -> None:
        """Mend what a crash (even SIGKILL) may have left; run before serving.

        - stale git lock files (`*.lock`) from writes that never finished;
        - staging folders and orphan repositories with no SQL row;
        - partial LFS uploads (never visible: they sit in the store's temp area);
        - SQL facts of main that lag behind the git ref (killed between the two writes).
        """
        repos_dir = self.settings.repos_dir
        shutil.rmtree(repos_dir / "staging", ignore_errors=True)
        for lock in repos_dir.glob("*/*.git/**/*.lock"):
            lock.unlink(missing_ok=True)
        self.objects.cleanup()
        with self.session() as s:
            rows = s.scalars(select(Repository)).all()
        known = {r.storage_key for r in rows}
        for path in repos_dir.glob("*/*.git"):
            if path.name[:-4] not in known:
                log.warning("removing orphan repository folder %s", path)
                shutil.rmtree(path, ignore_errors=True)
        for repo in rows:
            if not self.git_path(repo.storage_key).exists():
                log.error("repository %s has no git folder", repo.repo_id)
                continue
            git = self.git(repo)
            try:
                head = git.resolve("main")
                if head and head != repo.sha:
                    self.refresh_main(repo, git, head)
            finally:
                git.close()


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt", ".onnx", ".h5")
