"""Deduplication: a fine-tuned checkpoint that differs from its base in 5% of its bytes stores
at most 15% new bytes (measured in the object store) and sends at most 15% of its size over
the wire (measured by a proxy between the client and Cove)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import HfApi, hf_hub_download

from tests.server.conftest import seeded_server
from tests.xet.helpers import CountingProxy

pytestmark = pytest.mark.timeout(300)
MiB = 1 << 20


def stored_bytes(data_dir: Path) -> int:
    """Bytes in the object store (LFS objects and xorbs), staging area left out."""
    root = data_dir / "lfs"
    return sum(
        p.stat().st_size for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] != "tmp"
    )


def finetuned(base: bytes, fraction: float, rng) -> bytes:
    """`base` with `fraction` of its bytes rewritten, in ten runs past the first MiB."""
    out = bytearray(base)
    run = int(len(base) * fraction / 10)
    starts = np.sort(rng.choice(np.arange(MiB, len(base) - run, run * 2), 10, replace=False))
    for s in starts:
        out[s : s + run] = rng.bytes(run)
    assert sum(a != b for a, b in zip(out[::97], base[::97], strict=True)) > 0
    return bytes(out)


def test_finetuned_checkpoint_uploads_and_stores_only_the_change(tmp_path_factory):
    data = tmp_path_factory.mktemp("dedup-hub")
    live = seeded_server(data)
    proxy = CountingProxy(live.port)
    try:
        rng = np.random.default_rng(5)
        size = 24 * MiB
        base = rng.bytes(size)
        tuned = finetuned(base, 0.05, rng)
        work = tmp_path_factory.mktemp("ckpt")
        (work / "base.bin").write_bytes(base)
        (work / "tuned.bin").write_bytes(tuned)
        api = HfApi(endpoint=proxy.url, token=live.accounts.alice_write)
        api.create_repo("alice/base")
        api.upload_file(path_or_fileobj=str(work / "base.bin"), path_in_repo="model.bin",
                        repo_id="alice/base")
        before, sent_before = stored_bytes(data), proxy.sent
        # Another repository: deduplication is global, through the CAS's chunk index.
        api.create_repo("alice/tuned")
        api.upload_file(path_or_fileobj=str(work / "tuned.bin"), path_in_repo="model.bin",
                        repo_id="alice/tuned")
        new_stored = stored_bytes(data) - before
        new_sent = proxy.sent - sent_before
        print(f"\nsecond upload of {size} bytes: {new_stored} new bytes stored "
              f"({new_stored / size:.1%}), {new_sent} bytes sent ({new_sent / size:.1%})")
        assert new_stored <= 0.15 * size
        assert new_sent <= 0.15 * size
        for repo, expected in (("alice/base", base), ("alice/tuned", tuned)):
            path = hf_hub_download(repo, "model.bin", endpoint=live.url,
                                   cache_dir=tmp_path_factory.mktemp("cache"))
            assert Path(path).read_bytes() == expected
    finally:
        proxy.close()
        live.stop()
