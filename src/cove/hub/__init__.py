"""cove.hub: the hub client and the shared cache (huggingface_hub's names and cache layout).

    from cove.hub import snapshot_download, hf_hub_download, HfApi, login
"""

from cove.hub.api import (
    BlobLfsInfo,
    CommitInfo,
    DatasetFilter,
    DatasetInfo,
    GitCommitInfo,
    GitRefInfo,
    GitRefs,
    HfApi,
    HubApi,
    ModelFilter,
    ModelInfo,
    RepoFile,
    RepoFolder,
    RepoSibling,
    RepoUrl,
    SpaceInfo,
)
from cove.hub.auth import login, logout, whoami
from cove.hub.config import get_token
from cove.hub.download import (
    file_url,
    hf_hub_download,
    hf_hub_url,
    hub_download,
    snapshot_download,
)
from cove.hub.errors import (
    BadRequestError,
    CorruptedDownloadError,
    EntryNotFoundError,
    FileMetadataError,
    GatedRepoError,
    HfHubHTTPError,
    HubHTTPError,
    LocalEntryNotFoundError,
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from cove.hub.upload import CommitOperationAdd, CommitOperationDelete

__all__ = [
    "BadRequestError", "CorruptedDownloadError", "EntryNotFoundError", "FileMetadataError",
    "GatedRepoError", "HfHubHTTPError", "HubHTTPError", "LocalEntryNotFoundError",
    "LocalTokenNotFoundError", "OfflineModeIsEnabled", "RemoteEntryNotFoundError",
    "RepositoryNotFoundError", "RevisionNotFoundError", "file_url", "get_token",
    "hf_hub_download", "hf_hub_url", "hub_download", "snapshot_download",
    "BlobLfsInfo", "CommitInfo", "CommitOperationAdd", "CommitOperationDelete", "DatasetFilter",
    "DatasetInfo", "GitCommitInfo", "GitRefInfo", "GitRefs", "HfApi", "HubApi", "ModelFilter",
    "ModelInfo", "RepoFile", "RepoFolder", "RepoSibling", "RepoUrl", "SpaceInfo", "login",
    "logout", "whoami",
]
