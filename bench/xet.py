"""Xet storage against the LFS path, on one `cove serve`, through huggingface_hub 2.x + hf_xet.

1. Upload of a fresh file (random bytes): HfApi.upload_file through Xet (hf_xet, as installed)
   against the same client with Xet off (the LFS batch API and a signed PUT).
2. Download of it: hf_hub_download through CAS (reconstruction + xorb ranges) against the
   plain-HTTP download of the LFS copy.
3. Re-upload of the file with 5% of its bytes rewritten (ten runs): through Xet, where chunk
   deduplication sends and stores only what changed, against a whole LFS upload. Bytes sent
   (a counting proxy in front of Cove) and bytes newly stored (the object store) are printed.

COVE_BENCH_XET_MIB sets the file size (default 256; 1024 for the 1 GiB of issue 17),
COVE_BENCH_REPEATS the repeats (default and minimum 5). Every repeat uploads new random data,
so no upload deduplicates against an earlier repeat.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.pop("HF_HUB_DISABLE_XET", None)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Row, Stats, environment, finish, probe_gflops  # noqa: E402
from _server import cove, start_cove, stop  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.xet.helpers import CountingProxy  # noqa: E402

MIB = 1 << 20
SIZE = int(float(os.environ.get("COVE_BENCH_XET_MIB", "256")) * MIB)
REPEATS = max(5, int(os.environ.get("COVE_BENCH_REPEATS", "5")))
USER = "bench"


def stored_bytes(data: Path) -> int:
    root = data / "lfs"
    return sum(p.stat().st_size for p in root.rglob("*")
               if p.is_file() and p.relative_to(root).parts[0] != "tmp")


def rewrite(data: bytes, fraction: float, rng) -> bytes:
    """`data` with `fraction` of its bytes replaced, in ten runs past the first MiB."""
    out = bytearray(data)
    run = int(len(data) * fraction / 10)
    for start in sorted(rng.choice(range(MIB, len(data) - run, run * 2), 10, replace=False)):
        out[start : start + run] = rng.bytes(run)
    return bytes(out)


def main() -> list[Row]:
    import numpy as np
    from huggingface_hub import HfApi, constants, hf_hub_download

    print(f"xet: {environment('huggingface_hub', 'hf_xet', 'fastapi', 'uvicorn', 'blake3', 'lz4')}")
    print(f"xet: file size {SIZE / MIB:.0f} MiB, {REPEATS} repeats")
    print(f"xet: probe before: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    tmp = Path(tempfile.mkdtemp(prefix="cove-bench-xet-"))
    data = tmp / "data"
    data.mkdir()
    cove("admin", "user", "create", USER, data=data)
    token = cove("admin", "token", "create", USER, "--role", "write", "--name", "bench", data=data)
    server, url = start_cove(data)
    proxy = CountingProxy(int(url.rsplit(":", 1)[1]))
    api = HfApi(endpoint=proxy.url, token=token)
    repo = f"{USER}/xet"
    api.create_repo(repo)
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {k: [] for k in (
        "xet up", "lfs up", "xet down", "lfs down", "xet re-up", "lfs re-up")}
    sent, stored = [], []

    def upload(path: Path, name: str, xet: bool) -> float:
        constants.HF_HUB_DISABLE_XET = not xet
        t = time.perf_counter()
        api.upload_file(path_or_fileobj=str(path), path_in_repo=name, repo_id=repo)
        return time.perf_counter() - t

    def download(name: str, xet: bool) -> float:
        constants.HF_HUB_DISABLE_XET = not xet
        cache = tmp / "cache"
        t = time.perf_counter()
        path = hf_hub_download(repo, name, endpoint=url, cache_dir=cache)
        elapsed = time.perf_counter() - t
        if Path(path).stat().st_size != SIZE:
            raise RuntimeError(f"{name}: downloaded {Path(path).stat().st_size} bytes")
        shutil.rmtree(cache)
        return elapsed

    try:
        for i in range(REPEATS):
            body = rng.bytes(SIZE)
            xet_file, lfs_file = tmp / "xet.bin", tmp / "lfs.bin"
            xet_file.write_bytes(body)
            lfs_file.write_bytes(b"lfs-copy-%04d" % i + body[13:])  # another sha256
            # Alternate who goes first, so that neither always meets a warmer machine.
            order = [("xet", xet_file), ("lfs", lfs_file)][:: 1 if i % 2 == 0 else -1]
            for kind, path in order:
                times[f"{kind} up"].append(upload(path, f"{kind}-{i}.bin", kind == "xet"))
            for kind, _ in order:
                times[f"{kind} down"].append(download(f"{kind}-{i}.bin", kind == "xet"))
            changed = rewrite(body, 0.05, rng)
            xet_file.write_bytes(changed)
            lfs_file.write_bytes(b"lfs-tune-%04d" % i + changed[13:])
            before, sent_before = stored_bytes(data), proxy.sent
            times["xet re-up"].append(upload(xet_file, f"xet-{i}-tuned.bin", True))
            stored.append(stored_bytes(data) - before)
            sent.append(proxy.sent - sent_before)
            times["lfs re-up"].append(upload(lfs_file, f"lfs-{i}-tuned.bin", False))
            print(f"  repeat {i}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items())
                  + f"; 5%-changed re-upload sent {sent[-1] / SIZE:.1%}, stored "
                  f"{stored[-1] / SIZE:.1%} of the file")
    except BaseException:
        print(f"xet: failed; the end of cove's log:\n{(data / 'server.log').read_text()[-4000:]}",
              file=sys.stderr)
        raise
    finally:
        proxy.close()
        stop(server)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"xet: probe after: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    mib = f"{SIZE / MIB:.0f} MiB"
    bytes_note = (f"sent {Stats.of([s / SIZE * 100 for s in sent]).show('.1f')} % of the file, "
                  f"stored {Stats.of([s / SIZE * 100 for s in stored]).show('.1f')} % new bytes")
    return [
        Row("xet", f"upload {mib} (Xet vs LFS)", "s", Stats.of(times["xet up"]),
            Stats.of(times["lfs up"]), "LFS path"),
        Row("xet", f"download {mib} (Xet vs LFS)", "s", Stats.of(times["xet down"]),
            Stats.of(times["lfs down"]), "LFS path"),
        Row("xet", f"re-upload {mib}, 5% changed", "s", Stats.of(times["xet re-up"]),
            Stats.of(times["lfs re-up"]), "LFS path", "", bytes_note),
    ]


if __name__ == "__main__":
    finish(main())
