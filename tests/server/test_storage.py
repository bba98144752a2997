import hashlib
import os

import pytest

from cove.server.storage import LocalObjectStore, UploadMismatch


def test_object_visible_only_after_verified_commit(tmp_path):
    store = LocalObjectStore(tmp_path)
    data = os.urandom(100_000)
    oid = hashlib.sha256(data).hexdigest()
    pending = store.begin(oid, len(data))
    pending.write(data[:50_000])
    assert store.size(oid) is None  # nothing visible mid-upload
    pending.write(data[50_000:])
    pending.commit()
    assert store.size(oid) == len(data)
    with store.open(oid) as f:
        assert f.read() == data
    assert list(store.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("case", ["wrong-bytes", "short", "long"])
def test_mismatched_upload_rejected_and_discarded(tmp_path, case):
    store = LocalObjectStore(tmp_path)
    data = b"abc" * 1000
    oid = hashlib.sha256(data).hexdigest()
    pending = store.begin(oid, len(data))
    with pytest.raises(UploadMismatch):
        if case == "wrong-bytes":
            pending.write(b"x" * len(data))
            pending.commit()
        elif case == "short":
            pending.write(data[:-1])
            pending.commit()
        else:
            pending.write(data + b"!")
    pending.abort()
    assert store.size(oid) is None
    assert list(store.tmp_dir.iterdir()) == []


def test_cleanup_drops_interrupted_uploads(tmp_path):
    store = LocalObjectStore(tmp_path)
    pending = store.begin("0" * 64, 10)
    pending.write(b"12345")  # never committed: a crash mid-upload
    LocalObjectStore(tmp_path).cleanup()
    assert list(store.tmp_dir.iterdir()) == []


def test_rejects_non_sha256_ids(tmp_path):
    store = LocalObjectStore(tmp_path)
    with pytest.raises(ValueError):
        store.begin("../../etc/passwd", 1)
    assert store.size("../x") is None
