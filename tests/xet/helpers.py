"""What the Xet tests share: a live server, CAS tokens, and a reader of reconstructions."""

from __future__ import annotations

import httpx

from cove.server.xet.xorb import decode_chunk, iter_chunks


def cas_token(url: str, repo_id: str, token: str | None, op: str = "read") -> dict:
    r = httpx.get(f"{url}/api/models/{repo_id}/xet-{op}-token/main",
                  headers={"authorization": f"Bearer {token}"} if token else {})
    r.raise_for_status()
    return r.json()


def read_reconstruction(recon: dict) -> bytes:
    """A file's bytes from a reconstruction answer, fetched as the spec says a client does."""
    out = []
    skip = recon["offset_into_first_range"]
    for term in recon["terms"]:
        fetch = next(
            f for f in recon["fetch_info"][term["hash"]]
            if f["range"]["start"] <= term["range"]["start"]
            and f["range"]["end"] >= term["range"]["end"]
        )
        rng = fetch["url_range"]
        r = httpx.get(fetch["url"], headers={"Range": f"bytes={rng['start']}-{rng['end']}"})
        assert r.status_code == 206, r.text
        chunks = [decode_chunk(s, d, n) for _, s, d, n in iter_chunks(r.content)]
        first = fetch["range"]["start"]
        data = b"".join(chunks[term["range"]["start"] - first : term["range"]["end"] - first])
        assert len(data) == term["unpacked_length"]
        out.append(data)
    return b"".join(out)[skip:]
