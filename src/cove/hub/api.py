"""HubApi: the Hub's HTTP API with huggingface_hub's method names, arguments and result types.

    api = HubApi(endpoint="http://127.0.0.1:8000", token="hf_cove_...")
    api.create_repo("alice/tiny", private=True)
    api.upload_folder(repo_id="alice/tiny", folder_path="./tiny")
    [m.id for m in api.list_models(author="alice")]
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import quote, urlparse

from cove.hub import auth, config, download, http, upload
from cove.hub.errors import (
    GatedRepoError,
    HubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from cove.hub.upload import CommitOperation, CommitOperationAdd, CommitOperationDelete

SPACES_SDK_TYPES = ("gradio", "streamlit", "docker", "static")
# Never uploaded by upload_folder: git internals and huggingface_hub's local_dir metadata.
DEFAULT_IGNORE_PATTERNS = [
    ".git", ".git/*", "*/.git", "**/.git/**",
    ".cache/huggingface", ".cache/huggingface/*", "*/.cache/huggingface",
    "**/.cache/huggingface/**",
]
_SORT_ALIASES = {"last_modified": "lastModified", "created_at": "createdAt",
                 "trending_score": "trendingScore"}

Token = str | bool | None


# -- result types -------------------------------------------------------------------------


def parse_datetime(value: str | None) -> datetime | None:
    """The Hub's ISO dates ("2024-05-01T12:00:00.000Z"), timezone-aware."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class BlobLfsInfo:
    size: int
    sha256: str
    pointer_size: int


@dataclass
class RepoSibling:
    """A file of a repository, as info listings give it (size and ids with files_metadata)."""

    rfilename: str
    size: int | None = None
    blob_id: str | None = None
    lfs: BlobLfsInfo | None = None

    @classmethod
    def from_api(cls, data: dict) -> RepoSibling:
        lfs = data.get("lfs")
        return cls(
            rfilename=data["rfilename"], size=data.get("size"), blob_id=data.get("blobId"),
            lfs=BlobLfsInfo(lfs["size"], lfs["sha256"], lfs["pointerSize"]) if lfs else None,
        )


@dataclass
class _RepoInfo:
    id: str
    author: str | None = None
    sha: str | None = None
    private: bool | None = None
    gated: Literal["auto", "manual", False] | None = None
    disabled: bool | None = None
    downloads: int | None = None
    likes: int | None = None
    tags: list[str] | None = None
    card_data: dict | None = None
    siblings: list[RepoSibling] | None = None
    created_at: datetime | None = None
    last_modified: datetime | None = None
    used_storage: int | None = None

    @classmethod
    def from_api(cls, data: dict) -> Any:
        """Build from the Hub's JSON; absent fields stay None, unknown ones are ignored."""
        siblings = data.get("siblings")
        values = {
            "id": data["id"], "author": data.get("author"), "sha": data.get("sha"),
            "private": data.get("private"), "gated": data.get("gated"),
            "disabled": data.get("disabled"), "downloads": data.get("downloads"),
            "likes": data.get("likes"), "tags": data.get("tags"),
            "card_data": data.get("cardData"),
            "siblings": [RepoSibling.from_api(s) for s in siblings] if siblings is not None else None,
            "created_at": parse_datetime(data.get("createdAt")),
            "last_modified": parse_datetime(data.get("lastModified")),
            "used_storage": data.get("usedStorage"),
        }
        return cls(**values, **cls._extra(data))

    @staticmethod
    def _extra(data: dict) -> dict:
        return {}


@dataclass
class ModelInfo(_RepoInfo):
    """A model repository (model_info, list_models)."""

    pipeline_tag: str | None = None
    library_name: str | None = None

    @staticmethod
    def _extra(data: dict) -> dict:
        return {"pipeline_tag": data.get("pipeline_tag"), "library_name": data.get("library_name")}


@dataclass
class DatasetInfo(_RepoInfo):
    """A dataset repository (dataset_info, list_datasets)."""


@dataclass
class SpaceInfo(_RepoInfo):
    """A Space (space_info, list_spaces)."""

    sdk: str | None = None

    @staticmethod
    def _extra(data: dict) -> dict:
        return {"sdk": data.get("sdk")}


_INFO_CLASSES = {"model": ModelInfo, "dataset": DatasetInfo, "space": SpaceInfo}


@dataclass
class RepoFile:
    """A file in a repository tree (list_repo_tree, get_paths_info)."""

    path: str
    size: int
    blob_id: str
    lfs: BlobLfsInfo | None = None

    @property
    def rfilename(self) -> str:
        return self.path


@dataclass
class RepoFolder:
    """A folder in a repository tree."""

    path: str
    tree_id: str


def _tree_entry(data: dict) -> RepoFile | RepoFolder:
    if data.get("type") == "file":
        lfs = data.get("lfs")
        return RepoFile(
            path=data["path"], size=data["size"], blob_id=data["oid"],
            lfs=BlobLfsInfo(lfs["size"], lfs["oid"], lfs["pointerSize"]) if lfs else None,
        )
    return RepoFolder(path=data["path"], tree_id=data["oid"])


@dataclass
class GitRefInfo:
    name: str
    ref: str
    target_commit: str


@dataclass
class GitRefs:
    """Branches, converts and tags of a repository (list_repo_refs)."""

    branches: list[GitRefInfo]
    converts: list[GitRefInfo]
    tags: list[GitRefInfo]
    pull_requests: list[GitRefInfo] | None = None


@dataclass
class GitCommitInfo:
    """One commit of a repository's history (list_repo_commits)."""

    commit_id: str
    authors: list[str]
    created_at: datetime | None
    title: str
    message: str
    formatted_title: str | None = None
    formatted_message: str | None = None


class RepoUrl(str):
    """The URL of a repository (create_repo), with its id and type parsed out."""

    def __new__(cls, url: str, endpoint: str | None = None) -> RepoUrl:
        return super().__new__(cls, url)

    def __init__(self, url: str, endpoint: str | None = None) -> None:
        super().__init__()
        self.endpoint = (endpoint or config.endpoint()).rstrip("/")
        self.url = str(self)
        path = url[len(self.endpoint):] if url.startswith(self.endpoint + "/") else urlparse(url).path
        parts = [p for p in path.split("/") if p]
        self.repo_type = "model"
        for repo_type, prefix in config.URL_PREFIX.items():
            if prefix and parts and parts[0] == prefix.rstrip("/"):
                self.repo_type, parts = repo_type, parts[1:]
        if len(parts) != 2:
            raise ValueError(f"Cannot read a repository id from the URL {url!r}.")
        self.namespace, self.repo_name = parts
        self.repo_id = f"{self.namespace}/{self.repo_name}"

    def __repr__(self) -> str:
        return (f"RepoUrl('{self}', endpoint='{self.endpoint}', repo_type='{self.repo_type}', "
                f"repo_id='{self.repo_id}')")


class CommitInfo(str):
    """A commit just made (create_commit, upload_file, ...): the commit URL, with details."""

    def __new__(cls, commit_url: str, **kwargs: Any) -> CommitInfo:
        return super().__new__(cls, commit_url)

    def __init__(self, commit_url: str, *, commit_message: str, commit_description: str,
                 oid: str, pr_url: str | None = None, endpoint: str | None = None) -> None:
        super().__init__()
        self.commit_url = commit_url
        self.commit_message = commit_message
        self.commit_description = commit_description
        self.oid = oid
        self.pr_url = pr_url
        self.repo_url = RepoUrl(commit_url.split("/commit/")[0], endpoint=endpoint)
        self.pr_revision: str | None = None  # no pull requests on Cove yet
        self.pr_num: int | None = None

    def __repr__(self) -> str:  # huggingface_hub's dataclass repr, field for field
        fields = ("commit_url", "commit_message", "commit_description", "oid", "pr_url",
                  "repo_url", "pr_revision", "pr_num")
        return f"CommitInfo({', '.join(f'{f}={getattr(self, f)!r}' for f in fields)})"


@dataclass
class ModelFilter:
    """The older huggingface_hub filter object, accepted as `list_models(filter=...)`."""

    author: str | None = None
    library: str | list[str] | None = None
    language: str | list[str] | None = None
    model_name: str | None = None
    task: str | list[str] | None = None
    trained_dataset: str | list[str] | None = None
    tags: str | list[str] | None = None


@dataclass
class DatasetFilter:
    """The older huggingface_hub filter object, accepted as `list_datasets(filter=...)`."""

    author: str | None = None
    benchmark: str | list[str] | None = None
    dataset_name: str | None = None
    language_creators: str | list[str] | None = None
    language: str | list[str] | None = None
    multilinguality: str | list[str] | None = None
    size_categories: str | list[str] | None = None
    task_categories: str | list[str] | None = None
    task_ids: str | list[str] | None = None


def _as_list(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _prefixed(key: str, values: str | Iterable[str] | None) -> list[str]:
    return [v if v.startswith(f"{key}:") else f"{key}:{v}" for v in _as_list(values)]


def _filter_patterns(paths: Iterable[str], allow: str | list[str] | None,
                     ignore: str | list[str] | None) -> list[str]:
    """huggingface_hub's pattern rules: fnmatch, '*' crosses '/', 'dir/' means 'dir/*'."""
    def norm(patterns):
        return [p + "*" if p.endswith("/") else p for p in _as_list(patterns)]

    allow_list, ignore_list = norm(allow), norm(ignore)
    return [
        p for p in paths
        if (allow is None or any(fnmatch.fnmatchcase(p, a) for a in allow_list))
        and not any(fnmatch.fnmatchcase(p, i) for i in ignore_list)
    ]


# -- the API ------------------------------------------------------------------------------


class HubApi:
    """Client of a Hub: `endpoint` (default COVE_ENDPOINT / HF_ENDPOINT, read at each call)
    and `token` (default the configured token; False sends none)."""

    def __init__(self, endpoint: str | None = None, token: Token = None) -> None:
        self._endpoint = endpoint.rstrip("/") if endpoint else None
        self.token = token

    @property
    def endpoint(self) -> str:
        return self._endpoint or config.endpoint()

    # -- plumbing ---------------------------------------------------------------------------
    def _token(self, token: Token) -> Token:
        return self.token if token is None else token

    def _api(self, repo_type: str, repo_id: str, *rest: str) -> str:
        tail = "".join(f"/{p}" for p in rest)
        return f"{self.endpoint}/api/{config.API_PLURAL[repo_type]}/{repo_id}{tail}"

    def _get(self, url: str, token: Token, repo_id: str | None = None,
             repo_type: str | None = None, **kwargs: Any) -> Any:
        r = http.request("GET", url, token=self._token(token), **kwargs)
        http.raise_for_status(r, repo_id, repo_type)
        return r.json()

    def _paginate(self, url: str, params: Any, token: Token, repo_id: str | None = None,
                  repo_type: str | None = None) -> Iterator[dict]:
        """Items of a listing, page after page along `Link: <...>; rel="next"`, fetched lazily."""
        next_url: str | None = url
        while next_url:
            r = http.request("GET", next_url, token=self._token(token), params=params)
            http.raise_for_status(r, repo_id, repo_type)
            yield from r.json()
            next_url = r.links.get("next", {}).get("url")
            params = None  # the next link carries every parameter

    # -- accounts ---------------------------------------------------------------------------
    def whoami(self, token: Token = None) -> dict:
        """The account behind the token: name, orgs, and the token's role under auth."""
        token = self._token(token)
        if token is False:
            raise ValueError("whoami needs a token: token=False sends none.")
        return auth.whoami(token if isinstance(token, str) else None, endpoint=self.endpoint)

    # -- listings ---------------------------------------------------------------------------
    def _list(self, repo_type: str, params: dict, limit: int | None, token: Token) -> Iterator:
        cls = _INFO_CLASSES[repo_type]
        if limit is not None:
            params["limit"] = limit
        items = self._paginate(f"{self.endpoint}/api/{config.API_PLURAL[repo_type]}",
                               {k: v for k, v in params.items() if v not in (None, [], "")},
                               token)
        for n, item in enumerate(items):
            if limit is not None and n >= limit:
                return  # do not fetch pages past the limit
            yield cls.from_api(item)

    @staticmethod
    def _common(search: str | list[str] | None, author: str | None, sort: str | None,
                direction: int | None, full: bool | None) -> dict:
        return {
            "search": _as_list(search), "author": author,
            "sort": _SORT_ALIASES.get(sort, sort) if sort else None,
            "direction": str(direction) if direction is not None else None,
            "full": "true" if full else None,
        }

    def list_models(
        self,
        *,
        filter: str | Iterable[str] | ModelFilter | None = None,
        author: str | None = None,
        search: str | None = None,
        task: str | list[str] | None = None,
        library: str | list[str] | None = None,
        language: str | list[str] | None = None,
        tags: str | list[str] | None = None,
        trained_dataset: str | list[str] | None = None,
        pipeline_tag: str | None = None,
        sort: str | None = None,
        direction: int | None = None,
        limit: int | None = None,
        full: bool | None = None,
        cardData: bool = False,
        token: Token = None,
    ) -> Iterator[ModelInfo]:
        """Models matching every condition given; a generator that fetches pages as needed."""
        filters: list[str] = []
        search_terms = _as_list(search)
        if isinstance(filter, ModelFilter):
            author = author or filter.author
            if filter.model_name:
                search_terms.append(filter.model_name)
            for value in (filter.task, filter.library, filter.language, filter.tags):
                filters += _as_list(value)
            filters += _prefixed("dataset", filter.trained_dataset)
        else:
            filters += _as_list(filter)
        for value in (task, library, language, tags):
            filters += _as_list(value)
        filters += _prefixed("dataset", trained_dataset)
        params = {**self._common(search_terms, author, sort, direction, full), "filter": filters,
                  "pipeline_tag": pipeline_tag, "cardData": "true" if cardData else None}
        return self._list("model", params, limit, token)

    def list_datasets(
        self,
        *,
        filter: str | Iterable[str] | DatasetFilter | None = None,
        author: str | None = None,
        search: str | None = None,
        dataset_name: str | None = None,
        benchmark: str | list[str] | None = None,
        language_creators: str | list[str] | None = None,
        language: str | list[str] | None = None,
        multilinguality: str | list[str] | None = None,
        size_categories: str | list[str] | None = None,
        task_categories: str | list[str] | None = None,
        task_ids: str | list[str] | None = None,
        sort: str | None = None,
        direction: int | None = None,
        limit: int | None = None,
        full: bool | None = None,
        cardData: bool = False,
        token: Token = None,
    ) -> Iterator[DatasetInfo]:
        """Datasets matching every condition given; a generator that fetches pages as needed."""
        tagged = {"benchmark": benchmark, "language_creators": language_creators,
                  "language": language, "multilinguality": multilinguality,
                  "size_categories": size_categories, "task_categories": task_categories,
                  "task_ids": task_ids}
        search_terms = _as_list(search) + _as_list(dataset_name)
        filters: list[str] = []
        if isinstance(filter, DatasetFilter):
            author = author or filter.author
            search_terms += _as_list(filter.dataset_name)
            for key in tagged:
                filters += _prefixed(key, getattr(filter, key))
        else:
            filters += _as_list(filter)
        for key, value in tagged.items():
            filters += _prefixed(key, value)
        params = {**self._common(search_terms, author, sort, direction, full), "filter": filters,
                  "cardData": "true" if cardData else None}
        return self._list("dataset", params, limit, token)

    def list_spaces(
        self,
        *,
        filter: str | Iterable[str] | None = None,
        author: str | None = None,
        search: str | None = None,
        sort: str | None = None,
        direction: int | None = None,
        limit: int | None = None,
        full: bool | None = None,
        cardData: bool = False,
        token: Token = None,
    ) -> Iterator[SpaceInfo]:
        """Spaces matching every condition given; a generator that fetches pages as needed."""
        params = {**self._common(search, author, sort, direction, full),
                  "filter": _as_list(filter), "cardData": "true" if cardData else None}
        return self._list("space", params, limit, token)

    # -- repository info --------------------------------------------------------------------
    def repo_info(self, repo_id: str, *, revision: str | None = None,
                  repo_type: str | None = None, files_metadata: bool = False,
                  token: Token = None) -> ModelInfo | DatasetInfo | SpaceInfo:
        """The repository at `revision` (default main); sizes and hashes with `files_metadata`."""
        repo_type = config.check_repo_type(repo_type)
        url = (self._api(repo_type, repo_id) if revision is None
               else self._api(repo_type, repo_id, "revision", quote(revision, safe="")))
        data = self._get(url, token, repo_id, repo_type,
                         params={"blobs": "true"} if files_metadata else None)
        return _INFO_CLASSES[repo_type].from_api(data)

    def model_info(self, repo_id: str, *, revision: str | None = None,
                   files_metadata: bool = False, token: Token = None) -> ModelInfo:
        """A model repository's info."""
        return self.repo_info(repo_id, revision=revision, repo_type="model",
                              files_metadata=files_metadata, token=token)

    def dataset_info(self, repo_id: str, *, revision: str | None = None,
                     files_metadata: bool = False, token: Token = None) -> DatasetInfo:
        """A dataset repository's info."""
        return self.repo_info(repo_id, revision=revision, repo_type="dataset",
                              files_metadata=files_metadata, token=token)

    def space_info(self, repo_id: str, *, revision: str | None = None,
                   files_metadata: bool = False, token: Token = None) -> SpaceInfo:
        """A Space's info."""
        return self.repo_info(repo_id, revision=revision, repo_type="space",
                              files_metadata=files_metadata, token=token)

    def repo_exists(self, repo_id: str, *, repo_type: str | None = None,
                    token: Token = None) -> bool:
        """Whether the repository exists and is visible with this token (a gated one counts)."""
        try:
            self.repo_info(repo_id, repo_type=repo_type, token=token)
        except GatedRepoError:
            return True
        except RepositoryNotFoundError:
            return False
        return True

    def revision_exists(self, repo_id: str, revision: str, *, repo_type: str | None = None,
                        token: Token = None) -> bool:
        """Whether the branch, tag or commit exists in the repository."""
        try:
            self.repo_info(repo_id, revision=revision, repo_type=repo_type, token=token)
        except (RepositoryNotFoundError, RevisionNotFoundError):
            return False
        return True

    def file_exists(self, repo_id: str, filename: str, *, repo_type: str | None = None,
                    revision: str | None = None, token: Token = None) -> bool:
        """Whether `filename` exists at `revision` (a HEAD on its resolve URL)."""
        repo_type = config.check_repo_type(repo_type)
        url = download.file_url(repo_id, filename, repo_type, revision or "main", self.endpoint)
        try:
            download._metadata(url, self._token(token), repo_id, repo_type)
        except GatedRepoError:
            raise
        except (RepositoryNotFoundError, RemoteEntryNotFoundError, RevisionNotFoundError):
            return False
        return True

    # -- files ------------------------------------------------------------------------------
    def list_repo_tree(self, repo_id: str, path_in_repo: str | None = None, *,
                       recursive: bool = False, revision: str | None = None,
                       repo_type: str | None = None,
                       token: Token = None) -> Iterator[RepoFile | RepoFolder]:
        """Files and folders under `path_in_repo` (all levels with `recursive`), page by page."""
        repo_type = config.check_repo_type(repo_type)
        parts = ["tree", quote(revision or "main", safe="")]
        if path_in_repo and path_in_repo.strip("/"):
            parts.append(quote(path_in_repo.strip("/"), safe=""))
        params = {"recursive": "true" if recursive else "false", "expand": "false"}
        for item in self._paginate(self._api(repo_type, repo_id, *parts), params, token,
                                   repo_id, repo_type):
            yield _tree_entry(item)

    def list_repo_files(self, repo_id: str, *, revision: str | None = None,
                        repo_type: str | None = None, token: Token = None) -> list[str]:
        """Every file path of the repository at `revision`."""
        return [e.path for e in self.list_repo_tree(repo_id, recursive=True, revision=revision,
                                                    repo_type=repo_type, token=token)
                if isinstance(e, RepoFile)]

    def get_paths_info(self, repo_id: str, paths: list[str] | str, *,
                       revision: str | None = None, repo_type: str | None = None,
                       token: Token = None) -> list[RepoFile | RepoFolder]:
        """Info on the given paths; paths that do not exist are left out."""
        repo_type = config.check_repo_type(repo_type)
        url = self._api(repo_type, repo_id, "paths-info", quote(revision or "main", safe=""))
        r = http.request("POST", url, token=self._token(token),
                         data={"paths": _as_list(paths), "expand": "false"})
        http.raise_for_status(r, repo_id, repo_type)
        return [_tree_entry(item) for item in r.json()]

    def hf_hub_download(self, repo_id: str, filename: str, **kwargs: Any) -> str:
        """download.hf_hub_download with this client's endpoint and token."""
        kwargs["token"] = self._token(kwargs.get("token"))
        return download.hf_hub_download(repo_id, filename, endpoint=self.endpoint, **kwargs)

    def snapshot_download(self, repo_id: str, **kwargs: Any) -> str:
        """download.snapshot_download with this client's endpoint and token."""
        kwargs["token"] = self._token(kwargs.get("token"))
        return download.snapshot_download(repo_id, endpoint=self.endpoint, **kwargs)

    # -- repositories -----------------------------------------------------------------------
    def create_repo(self, repo_id: str, *, token: Token = None, private: bool | None = None,
                    repo_type: str | None = None, exist_ok: bool = False,
                    space_sdk: str | None = None) -> RepoUrl:
        """Create a repository (with an initial commit); `exist_ok` accepts an existing one."""
        repo_type = config.check_repo_type(repo_type)
        organization, name = repo_id.split("/") if "/" in repo_id else (None, repo_id)
        payload: dict[str, Any] = {"name": name, "organization": organization}
        if private is not None:
            payload["visibility"] = "private" if private else "public"
        if repo_type != "model":
            payload["type"] = repo_type
        if repo_type == "space":
            if space_sdk not in SPACES_SDK_TYPES:
                raise ValueError(f"A Space needs space_sdk, one of {', '.join(SPACES_SDK_TYPES)}; "
                                 f"got {space_sdk!r}.")
            payload["sdk"] = space_sdk
        r = http.request("POST", f"{self.endpoint}/api/repos/create", token=self._token(token),
                         json=payload)
        try:
            http.raise_for_status(r, repo_id, repo_type)
        except HubHTTPError as e:
            status = e.response.status_code
            if not exist_ok or status not in (401, 403, 409):
                raise
            if status == 409:
                try:
                    url = r.json().get("url")
                except ValueError:
                    url = None
                if url:  # the Hub names the existing repository in its 409 answer
                    return RepoUrl(url, endpoint=self.endpoint)
            # Not allowed to create here, but it may exist and be readable: then it is fine.
            try:
                self.repo_info(repo_id, repo_type=repo_type, token=token)
            except HubHTTPError:
                raise e from None
            return RepoUrl(f"{self.endpoint}/{config.URL_PREFIX[repo_type]}{repo_id}",
                           endpoint=self.endpoint)
        return RepoUrl(r.json()["url"], endpoint=self.endpoint)

    def delete_repo(self, repo_id: str, *, token: Token = None, repo_type: str | None = None,
                    missing_ok: bool = False) -> None:
        """Delete a repository; `missing_ok` ignores one that does not exist."""
        repo_type = config.check_repo_type(repo_type)
        organization, name = repo_id.split("/") if "/" in repo_id else (None, repo_id)
        payload: dict[str, Any] = {"name": name, "organization": organization}
        if repo_type != "model":
            payload["type"] = repo_type
        r = http.request("DELETE", f"{self.endpoint}/api/repos/delete",
                         token=self._token(token), json=payload)
        try:
            http.raise_for_status(r, repo_id, repo_type)
        except RepositoryNotFoundError:
            if not missing_ok:
                raise

    def move_repo(self, from_id: str, to_id: str, *, repo_type: str | None = None,
                  token: Token = None) -> None:
        """Rename a repository or move it to another namespace."""
        repo_type = config.check_repo_type(repo_type)
        for repo_id in (from_id, to_id):
            if len(repo_id.split("/")) != 2:
                raise ValueError(f"Invalid repo_id {repo_id!r}: use 'namespace/name'.")
        r = http.request("POST", f"{self.endpoint}/api/repos/move", token=self._token(token),
                         json={"fromRepo": from_id, "toRepo": to_id, "type": repo_type})
        http.raise_for_status(r, from_id, repo_type)

    # -- commits ----------------------------------------------------------------------------
    def create_commit(
        self,
        repo_id: str,
        operations: Iterable[CommitOperation],
        *,
        commit_message: str,
        commit_description: str | None = None,
        token: Token = None,
        repo_type: str | None = None,
        revision: str | None = None,
        create_pr: bool | None = None,
        num_threads: int = 5,
        parent_commit: str | None = None,
    ) -> CommitInfo:
        """Commit additions and deletions in one commit.

        Unchanged files are left out; when nothing changes, no commit is made and the current
        head of `revision` is returned, as huggingface_hub does.
        """
        repo_type = config.check_repo_type(repo_type)
        revision = revision or "main"
        if not commit_message:
            raise ValueError("create_commit needs a commit_message.")
        description = commit_description or ""
        answer = upload.commit(
            endpoint=self.endpoint, repo_id=repo_id, repo_type=repo_type, revision=revision,
            operations=operations, commit_message=commit_message,
            commit_description=description, parent_commit=parent_commit,
            create_pr=bool(create_pr), num_threads=num_threads, token=self._token(token),
        )
        if answer is None:
            sha = self.repo_info(repo_id, revision=revision, repo_type=repo_type, token=token).sha
            url = f"{self.endpoint}/{config.URL_PREFIX[repo_type]}{repo_id}/commit/{sha}"
            return CommitInfo(url, commit_message=commit_message, commit_description=description,
                              oid=sha, endpoint=self.endpoint)
        return CommitInfo(answer["commitUrl"], commit_message=commit_message,
                          commit_description=description, oid=answer["commitOid"],
                          pr_url=answer.get("pullRequestUrl") if create_pr else None,
                          endpoint=self.endpoint)

    def upload_file(
        self,
        *,
        path_or_fileobj: str | Path | bytes | BinaryIO,
        path_in_repo: str,
        repo_id: str,
        token: Token = None,
        repo_type: str | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        commit_description: str | None = None,
        create_pr: bool | None = None,
        parent_commit: str | None = None,
    ) -> CommitInfo:
        """Upload one file (a path, bytes or a binary file object) to `path_in_repo`."""
        return self.create_commit(
            repo_id, [CommitOperationAdd(path_in_repo, path_or_fileobj)],
            commit_message=commit_message or f"Upload {path_in_repo} with cove",
            commit_description=commit_description, token=token, repo_type=repo_type,
            revision=revision, create_pr=create_pr, parent_commit=parent_commit,
        )

    def upload_folder(
        self,
        *,
        repo_id: str,
        folder_path: str | Path,
        path_in_repo: str | None = None,
        commit_message: str | None = None,
        commit_description: str | None = None,
        token: Token = None,
        repo_type: str | None = None,
        revision: str | None = None,
        create_pr: bool | None = None,
        parent_commit: str | None = None,
        allow_patterns: list[str] | str | None = None,
        ignore_patterns: list[str] | str | None = None,
        delete_patterns: list[str] | str | None = None,
        num_threads: int = 5,
    ) -> CommitInfo:
        """Upload a folder in one commit; `delete_patterns` removes remote files it matches.

        Patterns apply to paths relative to `folder_path` (and to `path_in_repo` for deletes).
        """
        folder = Path(folder_path).expanduser().resolve()
        if not folder.is_dir():
            raise ValueError(f"folder_path {str(folder_path)!r} is not a folder.")
        root = path_in_repo.strip("/") if path_in_repo else ""
        prefix = f"{root}/" if root not in ("", ".") else ""  # "." is the root, as in huggingface_hub
        local = {p.relative_to(folder).as_posix(): p for p in sorted(folder.glob("**/*"))
                 if p.is_file()}
        ignore = _as_list(ignore_patterns) + DEFAULT_IGNORE_PATTERNS
        adds = [CommitOperationAdd(prefix + rel, local[rel])
                for rel in _filter_patterns(local, allow_patterns, ignore)]
        deletes: list[CommitOperation] = []
        if delete_patterns is not None:
            added = {op.path_in_repo for op in adds}
            remote = {f[len(prefix):]: f for f in self.list_repo_files(
                repo_id, revision=revision, repo_type=repo_type, token=token)
                if f.startswith(prefix)}
            deletes = [CommitOperationDelete(remote[rel], is_folder=False)
                       for rel in _filter_patterns(remote, delete_patterns, None)
                       if remote[rel] != ".gitattributes" and remote[rel] not in added]
        return self.create_commit(
            repo_id, deletes + adds,
            commit_message=commit_message or "Upload folder using cove",
            commit_description=commit_description, token=token, repo_type=repo_type,
            revision=revision, create_pr=create_pr, parent_commit=parent_commit,
            num_threads=num_threads,
        )

    def delete_file(self, path_in_repo: str, repo_id: str, *, token: Token = None,
                    repo_type: str | None = None, revision: str | None = None,
                    commit_message: str | None = None, commit_description: str | None = None,
                    create_pr: bool | None = None,
                    parent_commit: str | None = None) -> CommitInfo:
        """Delete one file in a commit."""
        return self.create_commit(
            repo_id, [CommitOperationDelete(path_in_repo, is_folder=False)],
            commit_message=commit_message or f"Delete {path_in_repo} with cove",
            commit_description=commit_description, token=token, repo_type=repo_type,
            revision=revision, create_pr=create_pr, parent_commit=parent_commit,
        )

    def delete_folder(self, path_in_repo: str, repo_id: str, *, token: Token = None,
                      repo_type: str | None = None, revision: str | None = None,
                      commit_message: str | None = None, commit_description: str | None = None,
                      create_pr: bool | None = None,
                      parent_commit: str | None = None) -> CommitInfo:
        """Delete a folder and everything under it in a commit."""
        return self.create_commit(
            repo_id, [CommitOperationDelete(path_in_repo, is_folder=True)],
            commit_message=commit_message or f"Delete folder {path_in_repo} with cove",
            commit_description=commit_description, token=token, repo_type=repo_type,
            revision=revision, create_pr=create_pr, parent_commit=parent_commit,
        )

    # -- refs and history -------------------------------------------------------------------
    def create_branch(self, repo_id: str, *, branch: str, revision: str | None = None,
                      token: Token = None, repo_type: str | None = None,
                      exist_ok: bool = False) -> None:
        """Create `branch` at `revision` (default: the head of main)."""
        repo_type = config.check_repo_type(repo_type)
        r = http.request("POST", self._api(repo_type, repo_id, "branch", quote(branch, safe="")),
                         token=self._token(token),
                         json={"startingPoint": revision} if revision is not None else {})
        try:
            http.raise_for_status(r, repo_id, repo_type)
        except HubHTTPError as e:
            if not (exist_ok and e.response.status_code == 409):
                raise

    def delete_branch(self, repo_id: str, *, branch: str, token: Token = None,
                      repo_type: str | None = None) -> None:
        """Delete a branch (main cannot be deleted)."""
        repo_type = config.check_repo_type(repo_type)
        r = http.request("DELETE", self._api(repo_type, repo_id, "branch", quote(branch, safe="")),
                         token=self._token(token))
        http.raise_for_status(r, repo_id, repo_type)

    def create_tag(self, repo_id: str, *, tag: str, tag_message: str | None = None,
                   revision: str | None = None, token: Token = None,
                   repo_type: str | None = None, exist_ok: bool = False) -> None:
        """Tag `revision` (default main); with `tag_message`, an annotated tag."""
        repo_type = config.check_repo_type(repo_type)
        payload = {"tag": tag}
        if tag_message is not None:
            payload["message"] = tag_message
        r = http.request("POST", self._api(repo_type, repo_id, "tag",
                                           quote(revision or "main", safe="")),
                         token=self._token(token), json=payload)
        try:
            http.raise_for_status(r, repo_id, repo_type)
        except HubHTTPError as e:
            if not (exist_ok and e.response.status_code == 409):
                raise

    def delete_tag(self, repo_id: str, *, tag: str, token: Token = None,
                   repo_type: str | None = None) -> None:
        """Delete a tag."""
        repo_type = config.check_repo_type(repo_type)
        r = http.request("DELETE", self._api(repo_type, repo_id, "tag", quote(tag, safe="")),
                         token=self._token(token))
        http.raise_for_status(r, repo_id, repo_type)

    def list_repo_refs(self, repo_id: str, *, repo_type: str | None = None,
                       include_pull_requests: bool = False, token: Token = None) -> GitRefs:
        """Branches, tags (and pull requests with `include_pull_requests`) with their commits."""
        repo_type = config.check_repo_type(repo_type)
        data = self._get(self._api(repo_type, repo_id, "refs"), token, repo_id, repo_type,
                         params={"include_prs": "1"} if include_pull_requests else None)

        def refs(items: list[dict]) -> list[GitRefInfo]:
            return [GitRefInfo(i["name"], i["ref"], i["targetCommit"]) for i in items]

        return GitRefs(
            branches=refs(data.get("branches", [])), converts=refs(data.get("converts", [])),
            tags=refs(data.get("tags", [])),
            pull_requests=refs(data.get("pullRequests", [])) if include_pull_requests else None,
        )

    def list_repo_commits(self, repo_id: str, *, repo_type: str | None = None,
                          token: Token = None, revision: str | None = None,
                          formatted: bool = False) -> list[GitCommitInfo]:
        """The history of `revision` (default main), newest first."""
        repo_type = config.check_repo_type(repo_type)
        url = self._api(repo_type, repo_id, "commits", quote(revision or "main", safe=""))
        params = {"expand[]": "formatted"} if formatted else None
        return [
            GitCommitInfo(
                commit_id=item["id"],
                authors=[a["user"] for a in item.get("authors", [])],
                created_at=parse_datetime(item.get("date")),
                title=item.get("title", ""),
                message=item.get("message", ""),
                formatted_title=(item.get("formatted") or {}).get("title"),
                formatted_message=(item.get("formatted") or {}).get("message"),
            )
            for item in self._paginate(url, params, token, repo_id, repo_type)
        ]


HfApi = HubApi

__all__ = [
    "BlobLfsInfo", "CommitInfo", "CommitOperationAdd", "CommitOperationDelete", "DatasetFilter",
    "DatasetInfo", "GitCommitInfo", "GitRefInfo", "GitRefs", "HfApi", "HubApi", "ModelFilter",
    "ModelInfo", "RepoFile", "RepoFolder", "RepoSibling", "RepoUrl", "SpaceInfo",
]
