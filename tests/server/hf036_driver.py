"""Drive a live Cove server with the huggingface_hub 0.36 client (requests-based).

A plain script, run by tests/server/test_hf_client_036.py with `.venv-hf036/bin/python`: it must
not import pytest or cove. Usage: hf036_driver.py WORKDIR. Environment: HF_ENDPOINT (set before
huggingface_hub is imported), HF_TOKEN (alice's write token), COVE_ALICE_READ and COVE_BOB_WRITE.

It prints one JSON object on stdout: {"ok": true, "results": {...}} with facts for the test to
check, or {"ok": false, "step": ..., "error": ..., "results": {...}} and exit status 1 when a
step raised something it did not expect.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

import huggingface_hub
from huggingface_hub import (
    HfApi,
    constants,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.utils import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    build_hf_headers,
    get_session,
)

BIG_SIZE = 21 * 1024 * 1024  # over the 10 MB threshold (and >= 20 MB): goes through LFS
README = """---
license: mit
language:
- en
library_name: transformers
pipeline_tag: text-classification
tags:
- cove-hf036
---

# m036

A tiny model uploaded by the huggingface_hub 0.36 client.
"""
DATASET_README = """---
license: cc-by-4.0
language:
- fr
tags:
- cove-hf036-data
---

# d036
"""

results: dict = {}
current = {"step": "start"}


@contextmanager
def step(name: str):
    current["step"] = name
    yield


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_hashes(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root (skipping the client's .cache)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith(".cache/"):
            out[rel] = sha256_file(p)
    return out


def error_name(fn) -> dict:
    """Call fn, which should fail: the exception's class, HTTP status and Hub error code."""
    try:
        fn()
    except Exception as e:  # the class is the result
        response = getattr(e, "response", None)
        return {
            "class": type(e).__name__,
            "mro": [c.__name__ for c in type(e).__mro__],
            "status": getattr(response, "status_code", None),
            "code": response.headers.get("X-Error-Code") if response is not None else None,
            "message": str(e)[:300],
        }
    return {"class": None}


def run(work: Path) -> None:
    write = os.environ["HF_TOKEN"]
    read = os.environ["COVE_ALICE_READ"]
    bob = os.environ["COVE_BOB_WRITE"]
    api = HfApi()  # alice's write token, from HF_TOKEN
    results["version"] = huggingface_hub.__version__
    results["endpoint"] = constants.ENDPOINT

    with step("whoami"):
        me = api.whoami()
        results["whoami"] = {"name": me["name"], "orgs": [o["name"] for o in me.get("orgs", [])],
                             "role": me["auth"]["accessToken"]["role"]}
        results["whoami_read_role"] = api.whoami(token=read)["auth"]["accessToken"]["role"]

    model, dataset, space, private = "alice/m036", "alice/d036", "alice/s036", "alice/p036"
    with step("create_repo"):
        results["create"] = {
            "model": str(api.create_repo(model)),
            "dataset": str(api.create_repo(dataset, repo_type="dataset")),
            "space": str(api.create_repo(space, repo_type="space", space_sdk="gradio")),
            "private": str(api.create_repo(private, private=True)),
            "org": str(api.create_repo("acme/o036")),
        }
        results["create_exist_ok"] = {
            "model": str(api.create_repo(model, exist_ok=True)),
            "dataset": str(api.create_repo(dataset, repo_type="dataset", exist_ok=True)),
            "space": str(api.create_repo(space, repo_type="space", space_sdk="gradio",
                                         exist_ok=True)),
        }
        results["create_again"] = error_name(lambda: api.create_repo(model))
        results["fresh_files"] = api.list_repo_files(model)

    with step("upload_folder"):
        src = work / "src"
        (src / "sub" / "dir").mkdir(parents=True)
        (src / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
        (src / "README.md").write_text(README)
        (src / "sub" / "dir" / "a.txt").write_text("hello from 0.36\n")
        (src / "sub" / "b.txt").write_text("b\n")
        (src / "weights.bin").write_bytes(random.Random(36).randbytes(BIG_SIZE))
        info = api.upload_folder(repo_id=model, folder_path=src, commit_message="Upload from 0.36")
        results["upload_commit"] = {"oid": info.oid, "url": str(info.commit_url),
                                    "message": info.commit_message}
        results["source_hashes"] = tree_hashes(src)
        first_commit = info.oid

    with step("model_info"):
        mi = api.model_info(model)
        mi_blobs = api.model_info(model, files_metadata=True)
        big = next(s for s in mi_blobs.siblings if s.rfilename == "weights.bin")
        small = next(s for s in mi_blobs.siblings if s.rfilename == "config.json")
        results["model_info"] = {
            "id": mi.id, "sha": mi.sha, "private": mi.private, "author": mi.author,
            "siblings": sorted(s.rfilename for s in mi.siblings),
            "tags": mi.tags, "pipeline_tag": mi.pipeline_tag, "library_name": mi.library_name,
            "card_license": mi.card_data.get("license") if mi.card_data else None,
            "card_tags": mi.card_data.get("tags") if mi.card_data else None,
            "big_size": big.size, "big_lfs": dict(big.lfs) if big.lfs else None,
            "small_size": small.size, "small_lfs": small.lfs,
            "xet_enabled": getattr(mi, "xet_enabled", None),
            "last_modified": mi.last_modified.isoformat() if mi.last_modified else None,
            "created_at": mi.created_at.isoformat() if mi.created_at else None,
        }
        results["model_info_at_commit"] = api.model_info(model, revision=first_commit).sha
        results["model_info_expand_xet"] = getattr(
            api.model_info(model, expand=["xetEnabled"]), "xet_enabled", None)

    with step("hf_hub_download"):
        downloads = {}
        for rel in results["source_hashes"]:
            downloads[rel] = sha256_file(hf_hub_download(model, rel))
        results["download_hashes"] = downloads
        # A second call is answered from the cache (HEAD only) and is the same file.
        again = hf_hub_download(model, "weights.bin")
        results["download_again_same"] = sha256_file(again) == downloads["weights.bin"]
        results["download_in_snapshot_of"] = Path(again).parent.name

    with step("snapshot_download"):
        snap = Path(snapshot_download(model))
        results["snapshot_dir_name"] = snap.name
        results["snapshot_hashes"] = tree_hashes(snap)
        local = work / "local"
        snapshot_download(model, local_dir=local)
        results["snapshot_local_dir_hashes"] = tree_hashes(local)

    with step("dataset and space"):
        dsrc = work / "dsrc"
        (dsrc / "data").mkdir(parents=True)
        (dsrc / "README.md").write_text(DATASET_README)
        (dsrc / "data" / "train.csv").write_text("text,label\nbonjour,1\nau revoir,0\n")
        api.upload_folder(repo_id=dataset, repo_type="dataset", folder_path=dsrc)
        di = api.dataset_info(dataset)
        results["dataset_info"] = {
            "id": di.id, "sha": di.sha, "private": di.private, "tags": di.tags,
            "siblings": sorted(s.rfilename for s in di.siblings),
            "card_license": di.card_data.get("license") if di.card_data else None,
        }
        path = hf_hub_download(dataset, "data/train.csv", repo_type="dataset")
        results["dataset_download"] = Path(path).read_text()
        results["list_datasets_author"] = [d.id for d in api.list_datasets(author="alice")]
        results["list_datasets_filter"] = [
            d.id for d in api.list_datasets(filter="cove-hf036-data")]
        si = api.space_info(space)
        results["space_info"] = {"id": si.id, "sdk": si.sdk, "sha": si.sha,
                                 "siblings": sorted(s.rfilename for s in si.siblings)}

    with step("list_models"):
        results["list_models"] = {
            "author": sorted(m.id for m in api.list_models(author="alice")),
            "author_acme": sorted(m.id for m in api.list_models(author="acme")),
            "search": sorted(m.id for m in api.list_models(search="m036")),
            "filter": sorted(m.id for m in api.list_models(filter="cove-hf036")),
            "filter_task": sorted(m.id for m in api.list_models(filter="text-classification")),
            "pipeline_tag": sorted(
                m.id for m in api.list_models(pipeline_tag="text-classification")),
            "sort_downloads": [
                (m.id, m.downloads)
                for m in api.list_models(author="alice", sort="downloads", direction=-1)],
            "sort_last_modified": [
                m.id for m in api.list_models(author="alice", sort="last_modified",
                                              direction=-1)],
            "limit": [m.id for m in api.list_models(author="alice", limit=1)],
            "full_siblings": [
                sorted(s.rfilename for s in (m.siblings or []))
                for m in api.list_models(search="m036", full=True)],
            "card_data": [
                (m.card_data or {}).get("license")
                for m in api.list_models(search="m036", cardData=True)],
            "anonymous": sorted(m.id for m in api.list_models(author="alice", token=False)),
            "read_token": sorted(m.id for m in api.list_models(author="alice", token=read)),
        }

    with step("files and tree"):
        results["list_repo_files"] = sorted(api.list_repo_files(model))
        tree = list(api.list_repo_tree(model, recursive=True))
        results["tree_recursive"] = sorted(
            (e.path, type(e).__name__, getattr(e, "size", None)) for e in tree)
        big_entry = next(e for e in tree if e.path == "weights.bin")
        results["tree_big_lfs"] = (
            {"sha256": big_entry.lfs.sha256, "size": big_entry.lfs.size} if big_entry.lfs else None
        )
        results["tree_sub"] = sorted(
            (e.path, type(e).__name__) for e in api.list_repo_tree(model, path_in_repo="sub"))
        paths = api.get_paths_info(model, ["config.json", "weights.bin", "sub", "nope.txt"])
        results["paths_info"] = sorted((p.path, type(p).__name__) for p in paths)
        results["paths_info_big_lfs_sha"] = next(
            (p.lfs.sha256 for p in paths if p.path == "weights.bin" and p.lfs), None)

    with step("branches and tags"):
        api.create_branch(model, branch="dev")
        api.create_tag(model, tag="v1", tag_message="first release")
        api.create_tag(model, tag="v1-light", revision=first_commit)
        results["create_branch_again"] = error_name(lambda: api.create_branch(model, branch="dev"))
        api.create_branch(model, branch="dev", exist_ok=True)
        refs = api.list_repo_refs(model)
        results["refs"] = {
            "branches": sorted((b.name, b.target_commit) for b in refs.branches),
            "tags": sorted((t.name, t.target_commit) for t in refs.tags),
            "converts": list(refs.converts),
            "pull_requests": api.list_repo_refs(model, include_pull_requests=True).pull_requests,
        }

    with step("delete_file and branch upload"):
        deleted = api.delete_file("sub/dir/a.txt", model, commit_message="Remove a.txt")
        results["delete_commit"] = deleted.oid
        results["files_after_delete"] = sorted(api.list_repo_files(model))
        on_dev = api.upload_file(path_or_fileobj=b"only on dev\n", path_in_repo="dev-only.txt",
                                 repo_id=model, revision="dev", commit_message="Dev file")
        results["dev_commit"] = on_dev.oid
        results["files_dev"] = sorted(api.list_repo_files(model, revision="dev"))
        results["files_main"] = sorted(api.list_repo_files(model))
        results["dev_download"] = Path(
            hf_hub_download(model, "dev-only.txt", revision="dev")).read_text()
        refs = api.list_repo_refs(model)
        results["refs_after"] = {b.name: b.target_commit for b in refs.branches}

    with step("commits"):
        commits = api.list_repo_commits(model)
        results["commits_main"] = [(c.commit_id, c.title) for c in commits]
        results["commits_main_authors"] = [list(c.authors) for c in commits]
        results["commits_main_dates_ordered"] = all(
            a.created_at >= b.created_at for a, b in zip(commits, commits[1:], strict=False))
        results["commits_formatted"] = len(api.list_repo_commits(model, formatted=True))
        results["commits_dev"] = [c.title for c in api.list_repo_commits(model, revision="dev")]

    with step("download by commit and tag"):
        results["by_commit"] = Path(
            hf_hub_download(model, "sub/dir/a.txt", revision=first_commit)).read_text()
        results["by_tag"] = Path(hf_hub_download(model, "sub/dir/a.txt", revision="v1")).read_text()
        results["by_tag_dir"] = Path(
            hf_hub_download(model, "config.json", revision="v1")).parent.name
        snap_tag = Path(snapshot_download(model, revision="v1"))
        results["snapshot_tag"] = {"dir": snap_tag.name, "files": sorted(tree_hashes(snap_tag))}
        snap_commit = Path(snapshot_download(model, revision=first_commit))
        results["snapshot_commit_dir"] = snap_commit.name

    with step("private repo"):
        api.upload_file(path_or_fileobj=b"secret\n", path_in_repo="secret.txt", repo_id=private)
        results["private_owner_read"] = Path(
            hf_hub_download(private, "secret.txt", token=read)).read_text()
        results["private_info_read_token"] = api.model_info(private, token=read).private
        results["private_in_own_listing"] = private in [m.id for m in api.list_models(author="alice")]

    with step("errors"):
        results["errors"] = {
            "private_anon_info": error_name(lambda: api.model_info(private, token=False)),
            "private_bob_info": error_name(lambda: api.model_info(private, token=bob)),
            "private_anon_download": error_name(
                lambda: hf_hub_download(private, "secret.txt", token=False,
                                        cache_dir=work / "anon-cache")),
            "private_bob_download": error_name(
                lambda: hf_hub_download(private, "secret.txt", token=bob,
                                        cache_dir=work / "bob-cache")),
            "private_bob_files": error_name(lambda: api.list_repo_files(private, token=bob)),
            "missing_repo": error_name(lambda: api.model_info("alice/does-not-exist")),
            "missing_file": error_name(lambda: hf_hub_download(model, "nope.txt")),
            "missing_tree_path": error_name(
                lambda: api.list_repo_tree(model, path_in_repo="nope-dir").__next__()),
            "missing_revision_download": error_name(
                lambda: hf_hub_download(model, "config.json", revision="no-such-branch")),
            "missing_revision_info": error_name(
                lambda: api.model_info(model, revision="no-such-branch")),
            "read_token_upload": error_name(
                lambda: api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt",
                                        repo_id=model, token=read)),
            "read_token_create": error_name(lambda: api.create_repo("alice/by-read", token=read)),
            "read_token_branch": error_name(
                lambda: api.create_branch(model, branch="by-read", token=read)),
            "bob_upload_to_alice": error_name(
                lambda: api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt",
                                        repo_id=model, token=bob)),
        }
        results["error_classes"] = {
            "EntryNotFoundError": EntryNotFoundError.__name__,
            "RevisionNotFoundError": RevisionNotFoundError.__name__,
            "RepositoryNotFoundError": RepositoryNotFoundError.__name__,
            "HfHubHTTPError": HfHubHTTPError.__name__,
        }

    with step("upload with a xet-capable client"):
        # With hf_xet installed and Xet not disabled, 0.36 offers "xet" in the LFS batch: the
        # server answers "basic" and the client must fall back to a plain LFS upload. The file
        # matches no .gitattributes pattern: it goes to LFS by size alone.
        import importlib.util

        results["hf_xet_installed"] = importlib.util.find_spec("hf_xet") is not None
        dat = random.Random(360).randbytes(11 * 1024 * 1024)
        saved = constants.HF_HUB_DISABLE_XET
        constants.HF_HUB_DISABLE_XET = False
        try:
            from huggingface_hub.utils._runtime import is_xet_available

            results["xet_offered"] = is_xet_available()
            info = api.upload_file(path_or_fileobj=dat, path_in_repo="big.dat", repo_id=dataset,
                                   repo_type="dataset", commit_message="Big file, xet offered")
            results["xet_upload_commit"] = info.oid
            got = hf_hub_download(dataset, "big.dat", repo_type="dataset")
            results["xet_upload_roundtrip"] = sha256_file(got) == hashlib.sha256(dat).hexdigest()
        finally:
            constants.HF_HUB_DISABLE_XET = saved
        entry = api.get_paths_info(dataset, ["big.dat"], repo_type="dataset")[0]
        results["xet_upload_lfs"] = (
            {"sha256": entry.lfs.sha256, "size": entry.lfs.size} if entry.lfs else None
        )
        results["xet_upload_sha256"] = hashlib.sha256(dat).hexdigest()

    with step("HfFileSystem"):
        # fsspec reads: paths-info/tree for metadata, ranged GETs (206) for the bytes.
        from huggingface_hub import HfFileSystem

        fs = HfFileSystem()
        with fs.open(f"{model}/weights.bin", "rb", block_size=1024) as f:
            f.seek(5_000_000)
            chunk = f.read(100)
        expected = random.Random(36).randbytes(BIG_SIZE)[5_000_000:5_000_100]
        results["hffs_range_ok"] = chunk == expected
        results["hffs_ls"] = sorted(e["name"] for e in fs.ls(f"{model}/sub", detail=True))
        results["hffs_ls_v1"] = sorted(e["name"] for e in fs.ls(f"{model}@v1/sub", detail=True))
        results["hffs_size"] = fs.size(f"{model}/weights.bin")

    with step("exists helpers and delete_repo"):
        # These map the Hub's error codes back to booleans.
        results["exists"] = {
            "repo": api.repo_exists(model),
            "repo_missing": api.repo_exists("alice/nope-036"),
            "private_anon": api.repo_exists(private, token=False),
            "file": api.file_exists(model, "config.json"),
            "file_missing": api.file_exists(model, "nope.txt"),
            "file_at_tag": api.file_exists(model, "sub/dir/a.txt", revision="v1"),
            "revision": api.revision_exists(model, "dev"),
            "revision_missing": api.revision_exists(model, "nope"),
        }
        api.create_repo("alice/tmp036", repo_type="dataset")
        api.delete_repo("alice/tmp036", repo_type="dataset")
        results["deleted_exists"] = api.repo_exists("alice/tmp036", repo_type="dataset")
        api.delete_repo("alice/tmp036", repo_type="dataset", missing_ok=True)
        results["delete_missing"] = error_name(
            lambda: api.delete_repo("alice/tmp036", repo_type="dataset"))

    with step("lfs batch offering xet"):
        # 0.36 offers "xet" next to basic when hf_xet is usable; the server must pick basic.
        oid = hashlib.sha256(b"xet offer").hexdigest()
        r = get_session().post(
            f"{constants.ENDPOINT}/{model}.git/info/lfs/objects/batch",
            headers={"Accept": "application/vnd.git-lfs+json",
                     "Content-Type": "application/vnd.git-lfs+json",
                     **build_hf_headers(token=write)},
            json={"operation": "upload", "transfers": ["basic", "multipart", "xet"],
                  "objects": [{"oid": oid, "size": 9}], "hash_algo": "sha256",
                  "ref": {"name": "main"}},
        )
        body = r.json()
        results["lfs_batch_xet_offer"] = {
            "status": r.status_code, "transfer": body.get("transfer"),
            "has_upload": "upload" in (body.get("objects") or [{}])[0].get("actions", {}),
        }
        head = get_session().head(
            f"{constants.ENDPOINT}/{model}/resolve/main/weights.bin",
            headers=build_hf_headers(token=write), allow_redirects=False)
        results["resolve_headers"] = {
            k: head.headers.get(k) for k in (
                "X-Repo-Commit", "ETag", "X-Linked-Etag", "X-Linked-Size", "Content-Length",
                "X-Xet-Hash", "Link", "X-Xet-Refresh-Route")
        }


def main() -> int:
    work = Path(sys.argv[1])
    try:
        run(work)
    except Exception:  # reported as JSON for the test
        print(json.dumps({"ok": False, "step": current["step"],
                          "error": traceback.format_exc(), "results": results}, default=str))
        return 1
    print(json.dumps({"ok": True, "results": results}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
