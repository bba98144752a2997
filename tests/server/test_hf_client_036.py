"""End to end with the older huggingface_hub 0.36 client (requests, True/False flags, direction=-1).

The 0.36 line conflicts with the 2.x client of the main venv, so it lives in `.venv-hf036`
(`make .venv-hf036`) and drives the server from a subprocess: tests/server/hf036_driver.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = ROOT / ".venv-hf036" / "bin" / "python"
DRIVER = Path(__file__).with_name("hf036_driver.py")
HEX40 = re.compile(r"^[0-9a-f]{40}$")
MODEL, DATASET, SPACE, PRIVATE = "alice/m036", "alice/d036", "alice/s036", "alice/p036"


def require_venv() -> None:
    if not VENV_PYTHON.exists():
        pytest.fail(
            f"{VENV_PYTHON} is missing: run `make .venv-hf036` to create the huggingface_hub "
            "0.36 venv these tests drive the server with.",
            pytrace=False,
        )


def test_hf036_venv_present():
    require_venv()  # a missing venv is a failure, never a silent skip


@pytest.fixture(scope="module")
def run036(request, tmp_path_factory) -> dict:
    require_venv()
    server = request.getfixturevalue("server")  # started only once the venv is known to exist
    work = tmp_path_factory.mktemp("hf036")
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGINGFACE_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env.update(
        HF_ENDPOINT=server.url,
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HOME=str(work / "hf-home"),
        HF_TOKEN=server.accounts.alice_write,
        COVE_ALICE_READ=server.accounts.alice_read,
        COVE_BOB_WRITE=server.accounts.bob_write,
    )
    proc = subprocess.run(
        [str(VENV_PYTHON), str(DRIVER), str(work)],
        env=env, cwd=work, capture_output=True, text=True, timeout=600,
    )
    try:
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        pytest.fail(
            f"the 0.36 driver printed no JSON (exit {proc.returncode}).\nstdout:\n{proc.stdout}"
            f"\nstderr:\n{proc.stderr[-5000:]}", pytrace=False,
        )
    if not report["ok"]:
        pytest.fail(
            f"the 0.36 driver failed at step {report['step']!r}:\n{report['error']}\n"
            f"stderr:\n{proc.stderr[-3000:]}", pytrace=False,
        )
    assert proc.returncode == 0, proc.stderr
    report["results"]["_work"] = str(work)
    return report["results"]


def test_client_version_and_endpoint(run036, server):
    assert run036["version"].startswith("0.36.")
    assert run036["endpoint"] == server.url


def test_whoami(run036):
    assert run036["whoami"] == {"name": "alice", "orgs": ["acme"], "role": "write"}
    assert run036["whoami_read_role"] == "read"


def test_create_repo_kinds_and_exist_ok(run036, server):
    created = run036["create"]
    assert created["model"] == f"{server.url}/{MODEL}"
    assert created["dataset"] == f"{server.url}/datasets/{DATASET}"
    assert created["space"] == f"{server.url}/spaces/{SPACE}"
    assert created["private"] == f"{server.url}/{PRIVATE}"
    assert created["org"] == f"{server.url}/acme/o036"
    assert run036["create_exist_ok"] == {k: created[k] for k in ("model", "dataset", "space")}
    again = run036["create_again"]
    assert again["status"] == 409 and "HfHubHTTPError" in again["mro"], again
    # A new repository is not empty: it starts with a .gitattributes commit.
    assert run036["fresh_files"] == [".gitattributes"]


def test_upload_folder_and_model_info(run036):
    commit = run036["upload_commit"]
    assert HEX40.match(commit["oid"])
    assert commit["url"].endswith(f"/{MODEL}/commit/{commit['oid']}")
    info = run036["model_info"]
    assert info["id"] == MODEL and info["author"] == "alice" and info["private"] is False
    assert info["sha"] == run036["model_info_at_commit"] == commit["oid"]
    assert info["siblings"] == sorted(
        [".gitattributes", "README.md", "config.json", "sub/b.txt", "sub/dir/a.txt", "weights.bin"]
    )
    assert info["pipeline_tag"] == "text-classification"
    assert info["library_name"] == "transformers"
    assert info["card_license"] == "mit" and info["card_tags"] == ["cove-hf036"]
    assert "cove-hf036" in info["tags"]
    assert info["last_modified"] and info["created_at"]
    big_sha = run036["source_hashes"]["weights.bin"]
    assert info["big_size"] == 21 * 1024 * 1024
    assert info["big_lfs"]["sha256"] == big_sha and info["big_lfs"]["size"] == info["big_size"]
    assert info["small_lfs"] is None and info["small_size"] > 0
    # Xet is never advertised.
    assert not info["xet_enabled"] and not run036["model_info_expand_xet"]


def test_downloads_are_byte_identical(run036):
    source = run036["source_hashes"]
    assert set(source) == {"README.md", "config.json", "sub/b.txt", "sub/dir/a.txt", "weights.bin"}
    assert run036["download_hashes"] == source
    assert run036["download_again_same"] is True
    sha = run036["upload_commit"]["oid"]
    assert run036["download_in_snapshot_of"] == sha
    assert run036["snapshot_dir_name"] == sha
    snapshot = dict(run036["snapshot_hashes"])
    assert snapshot.pop(".gitattributes")
    assert snapshot == source
    local = dict(run036["snapshot_local_dir_hashes"])
    assert local.pop(".gitattributes")
    assert local == source


def test_dataset_and_space(run036):
    ds = run036["dataset_info"]
    assert ds["id"] == DATASET and HEX40.match(ds["sha"]) and ds["private"] is False
    assert ds["siblings"] == [".gitattributes", "README.md", "data/train.csv"]
    assert ds["card_license"] == "cc-by-4.0"
    assert "cove-hf036-data" in ds["tags"]
    assert run036["dataset_download"] == "text,label\nbonjour,1\nau revoir,0\n"
    assert run036["list_datasets_author"] == [DATASET]
    assert run036["list_datasets_filter"] == [DATASET]
    space = run036["space_info"]
    assert space["id"] == SPACE and space["sdk"] == "gradio" and HEX40.match(space["sha"])


def test_list_models(run036):
    lm = run036["list_models"]
    assert lm["author"] == sorted([MODEL, PRIVATE])
    assert lm["author_acme"] == ["acme/o036"]
    assert lm["search"] == [MODEL]
    assert lm["filter"] == [MODEL]
    assert lm["filter_task"] == [MODEL]
    assert lm["pipeline_tag"] == [MODEL]
    by_downloads = lm["sort_downloads"]
    assert sorted(i for i, _ in by_downloads) == sorted([MODEL, PRIVATE])
    counts = [n for _, n in by_downloads]
    assert counts == sorted(counts, reverse=True), by_downloads  # direction=-1: descending
    assert by_downloads[0][0] == MODEL and by_downloads[0][1] >= 1  # config.json was fetched
    # The model had a commit (the upload) after the private repo was created: newest first.
    assert lm["sort_last_modified"] == [MODEL, PRIVATE]
    assert len(lm["limit"]) == 1
    assert lm["full_siblings"] and "weights.bin" in lm["full_siblings"][0]
    assert lm["card_data"] == ["mit"]
    assert lm["anonymous"] == [MODEL]
    assert lm["read_token"] == sorted([MODEL, PRIVATE])


def test_files_tree_and_paths_info(run036):
    big_sha = run036["source_hashes"]["weights.bin"]
    assert run036["list_repo_files"] == sorted(
        [".gitattributes", "README.md", "config.json", "sub/b.txt", "sub/dir/a.txt", "weights.bin"]
    )
    tree = {tuple(e[:2]): e[2] for e in run036["tree_recursive"]}
    assert ("sub", "RepoFolder") in tree and ("sub/dir", "RepoFolder") in tree
    assert tree[("weights.bin", "RepoFile")] == 21 * 1024 * 1024
    assert ("sub/dir/a.txt", "RepoFile") in tree
    assert run036["tree_big_lfs"] == {"sha256": big_sha, "size": 21 * 1024 * 1024}
    assert run036["tree_sub"] == [["sub/b.txt", "RepoFile"], ["sub/dir", "RepoFolder"]]
    assert run036["paths_info"] == [
        ["config.json", "RepoFile"], ["sub", "RepoFolder"], ["weights.bin", "RepoFile"],
    ]
    assert run036["paths_info_big_lfs_sha"] == big_sha


def test_branches_tags_and_refs(run036):
    first = run036["upload_commit"]["oid"]
    refs = run036["refs"]
    assert refs["branches"] == [["dev", first], ["main", first]]
    assert refs["tags"] == [["v1", first], ["v1-light", first]]
    assert refs["converts"] == [] and refs["pull_requests"] == []
    again = run036["create_branch_again"]
    assert again["status"] == 409, again


def test_delete_file_and_branch_upload(run036):
    first = run036["upload_commit"]["oid"]
    deleted, dev = run036["delete_commit"], run036["dev_commit"]
    assert HEX40.match(deleted) and HEX40.match(dev) and len({first, deleted, dev}) == 3
    assert "sub/dir/a.txt" not in run036["files_after_delete"]
    assert run036["files_main"] == run036["files_after_delete"]
    assert "dev-only.txt" in run036["files_dev"] and "dev-only.txt" not in run036["files_main"]
    assert "sub/dir/a.txt" in run036["files_dev"]  # dev branched before the deletion
    assert run036["dev_download"] == "only on dev\n"
    assert run036["refs_after"] == {"main": deleted, "dev": dev}


def test_commit_history(run036):
    first = run036["upload_commit"]["oid"]
    main = run036["commits_main"]
    assert [c[1] for c in main[:2]] == ["Remove a.txt", "Upload from 0.36"]
    assert main[0][0] == run036["delete_commit"] and main[1][0] == first
    assert len(main) == 3  # + the initial commit of create_repo
    assert all(HEX40.match(c[0]) for c in main)
    assert main[0][0] and run036["commits_main_authors"][0] == ["alice"]
    assert run036["commits_dev"][:2] == ["Dev file", "Upload from 0.36"]
    assert run036["commits_main_dates_ordered"] is True
    assert run036["commits_formatted"] == 3


def test_download_by_commit_and_tag(run036):
    first = run036["upload_commit"]["oid"]
    assert run036["by_commit"] == "hello from 0.36\n"
    assert run036["by_tag"] == "hello from 0.36\n"
    assert run036["by_tag_dir"] == first
    assert run036["snapshot_tag"]["dir"] == first
    assert "sub/dir/a.txt" in run036["snapshot_tag"]["files"]
    assert run036["snapshot_commit_dir"] == first


def test_private_repo_owner_access(run036):
    assert run036["private_owner_read"] == "secret\n"
    assert run036["private_info_read_token"] is True
    assert run036["private_in_own_listing"] is True


@pytest.mark.parametrize("case", [
    "private_anon_info", "private_bob_info", "private_anon_download", "private_bob_download",
    "private_bob_files", "missing_repo",
])
def test_repository_not_found(run036, case):
    err = run036["errors"][case]
    assert err["class"] == "RepositoryNotFoundError", err
    assert err["code"] == "RepoNotFound" and err["status"] in (401, 404), err


@pytest.mark.parametrize("case", ["missing_file", "missing_tree_path"])
def test_entry_not_found(run036, case):
    err = run036["errors"][case]
    assert err["class"] == "EntryNotFoundError", err
    assert err["code"] == "EntryNotFound" and err["status"] == 404, err


@pytest.mark.parametrize("case", ["missing_revision_download", "missing_revision_info"])
def test_revision_not_found(run036, case):
    err = run036["errors"][case]
    assert err["class"] == "RevisionNotFoundError", err
    assert err["code"] == "RevisionNotFound" and err["status"] == 404, err


@pytest.mark.parametrize("case", [
    "read_token_upload", "read_token_create", "read_token_branch", "bob_upload_to_alice",
])
def test_writes_refused(run036, case):
    err = run036["errors"][case]
    assert err["class"] is not None and "HfHubHTTPError" in err["mro"], err
    assert err["status"] in (401, 403, 404), err
    assert err["status"] == 403 or case == "bob_upload_to_alice", err


def test_lfs_batch_answers_basic_when_xet_is_offered(run036):
    assert run036["lfs_batch_xet_offer"] == {"status": 200, "transfer": "basic", "has_upload": True}


def test_resolve_headers(run036):
    h = run036["resolve_headers"]
    big_sha = run036["source_hashes"]["weights.bin"]
    assert HEX40.match(h["X-Repo-Commit"])
    assert h["ETag"].strip('"') == big_sha and h["X-Linked-Etag"].strip('"') == big_sha
    assert h["X-Linked-Size"] == h["Content-Length"] == str(21 * 1024 * 1024)
    assert h["X-Xet-Hash"] is None and h["X-Xet-Refresh-Route"] is None
    assert h["Link"] is None or "xet" not in h["Link"]


def test_xet_capable_client_falls_back_to_basic_lfs(run036):
    assert run036["hf_xet_installed"] is True and run036["xet_offered"] is True
    assert HEX40.match(run036["xet_upload_commit"])
    assert run036["xet_upload_roundtrip"] is True
    assert run036["xet_upload_lfs"] == {
        "sha256": run036["xet_upload_sha256"], "size": 11 * 1024 * 1024,
    }


def test_hf_file_system_ranged_reads(run036):
    assert run036["hffs_range_ok"] is True
    assert run036["hffs_ls"] == [f"{MODEL}/sub/b.txt"]  # sub/dir/a.txt was deleted on main
    assert run036["hffs_ls_v1"] == [f"{MODEL}@v1/sub/b.txt", f"{MODEL}@v1/sub/dir"]
    assert run036["hffs_size"] == 21 * 1024 * 1024


def test_exists_helpers_and_delete_repo(run036):
    assert run036["exists"] == {
        "repo": True, "repo_missing": False, "private_anon": False, "file": True,
        "file_missing": False, "file_at_tag": True, "revision": True, "revision_missing": False,
    }
    assert run036["deleted_exists"] is False
    assert run036["delete_missing"]["class"] == "RepositoryNotFoundError", run036["delete_missing"]
