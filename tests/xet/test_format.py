"""Xet's hashes, chunking, xorbs and shards against the spec's vectors and the real client.

The aggregated-hash vectors are xet-core's published reference (merklehash's
`test_correctness`), the string form is the example of the spec's api.md, and chunk
boundaries and file hashes are checked against hf_xet's own `hash_files` on varied data (the
spec's reference files live on huggingface.co, out of reach of an offline suite).
"""

from __future__ import annotations

import hashlib

import hf_xet
import numpy as np
import pytest

from cove.server.xet.hashing import (
    MAX_CHUNK,
    MIN_CHUNK,
    chunk_boundaries,
    chunk_file,
    chunk_hash,
    file_hash,
    hash_to_str,
    merkle_root,
    str_to_hash,
    verification_hash,
)
from cove.server.xet.shard import (
    CasInfo,
    FileInfo,
    ShardError,
    Term,
    build_shard,
    dedup_shard,
    parse_shard,
)
from cove.server.xet.xorb import (
    BG4_LZ4,
    LZ4,
    MAX_XORB_BYTES,
    NONE,
    XorbError,
    build_xorb,
    parse_xorb,
)

# (leaves as (hash string, size), xorb hash, [(salt, file hash)]) from xet-core.
AGGREGATED = [
    ([], "0" * 64, [("0" * 64, "0" * 64)]),
    (
        [("cfc5d07f6f03c29bbf424132963fe08d19a37d5757aaf520bf08119f05cd56d6", 100)],
        "cfc5d07f6f03c29bbf424132963fe08d19a37d5757aaf520bf08119f05cd56d6",
        [("0" * 64, "8e16257caa3fe079d484d872a8975264b2ff683b0d6db9028cc7c0f968a45661"),
         ("285371a6a3c8c4e561469c97766c46f0b9799bd8ea51a4ad27a082df8c28b7da",
          "6c18994ed5e6a223aeff68a6e386dbba7b3c25de076245dc77892b4ad49ac978")],
    ),
    (
        [("cfc5d07f6f03c29bbf424132963fe08d19a37d5757aaf520bf08119f05cd56d6", 100),
         ("c3e67584b5c4fc2a89837ec39e40f2c8a6bb0b2987ac94cd4b31e5fbdd210a72", 200),
         ("0d2beb91b9196929a5ddec9f6e306924ddf4a24268e3e59fd8464738d525af37", 300)],
        "71ec1275fca074724e2dd666921b3277c7cee603e4d025bcab2d4050015be2bc",
        [("0" * 64, "54e55dccc6653c612bdb5576c5d3cb34bb31bc4e100248abccf4c908b3ef7715"),
         ("b286606709ef32a1cfede1e603a39f83fef56772d8234c0e35d8920071d80b69",
          "337f1f046e4cfc1057f0f3edbd87cf977fdfaf3c2b0c0031ca2d1d2a34aa2270")],
    ),
    (
        [("cfc5d07f6f03c29bbf424132963fe08d19a37d5757aaf520bf08119f05cd56d6", 100)] * 4,
        "89f2ada89ff8c96763c6b25010e6dd76a4c05b1466207633ea559acf2093211b",
        [("0" * 64, "2cdba690d0e09563596e0cda626d43eb4c96ef1e994fe72d9b2f5a83cfcd36dd")],
    ),
    (
        [("cfc5d07f6f03c29bbf424132963fe08d19a37d5757aaf520bf08119f05cd56d6", 100),
         ("c3e67584b5c4fc2a89837ec39e40f2c8a6bb0b2987ac94cd4b31e5fbdd210a72", 200)] * 2
        + [("0d2beb91b9196929a5ddec9f6e306924ddf4a24268e3e59fd8464738d525af37", 300),
           ("adf8773496a9b7319b2e50dc98093f344053b17d8ad37100b9c07d9805988784", 400)],
        "52c826f99507aa05d0b45e9837fa1709e0485425cfbcb1e80db3905cf98b3ee9",
        [("0" * 64, "91d21684db364c8883ab8209fa5eb2e781cf07f37e1fa43e731c30839afe422f")],
    ),
    (
        [("0" * 64, 0), ("cfc5d07f6f03c29bbf424132963fe08d19a37d5757aaf520bf08119f05cd56d6", 100)] * 2
        + [("0" * 64, 0)],
        "f36c6a6374a567efd36ed087aeb680b57e3af4e0b5b8e7be2593df4cb647a2de",
        [("0" * 64, "ab2f46d31855e1133b3b5b70e78f841394a648710a208923b221c1a8a0572a1f")],
    ),
]


@pytest.mark.parametrize("leaves, xorb, files", AGGREGATED)
def test_aggregated_hash_vectors(leaves, xorb, files):
    nodes = [(str_to_hash(h), size) for h, size in leaves]
    assert hash_to_str(merkle_root(nodes)) == xorb
    for salt, expected in files:
        assert hash_to_str(file_hash(nodes, str_to_hash(salt))) == expected


def test_hash_string_form():
    # api.md's example: bytes 0..31 reordered to 7..0, 15..8, 23..16, 31..24 (the spec's
    # printed string drops the "10" of the third word: it has 62 characters).
    raw = bytes(range(32))
    assert hash_to_str(raw) == (
        "0706050403020100" "0f0e0d0c0b0a0908" "1716151413121110" "1f1e1d1c1b1a1918"
    )
    assert str_to_hash(hash_to_str(raw)) == raw
    for bad in ("", "g" * 64, "0" * 63, "A" * 64):
        with pytest.raises(ValueError):
            str_to_hash(bad)


def _samples(rng):
    floats = rng.standard_normal(700_000).astype(np.float32).tobytes()
    text = b"".join(b"row %d, value %d\n" % (i, i * i % 977) for i in range(150_000))
    return {
        "empty": b"", "tiny": b"xet", "random": rng.bytes(3_500_000), "floats": floats,
        "zeros": bytes(1_300_000), "text": text, "one-chunk": rng.bytes(MIN_CHUNK - 1),
    }


def test_chunking_and_file_hash_equal_hf_xet(tmp_path):
    rng = np.random.default_rng(7)
    samples = _samples(rng)
    paths = []
    for name, data in samples.items():
        path = tmp_path / name
        path.write_bytes(data)
        paths.append(str(path))
    theirs = hf_xet.hash_files(paths)
    for (name, data), info in zip(samples.items(), theirs, strict=True):
        assert hash_to_str(file_hash(chunk_file(data))) == info.hash, name
        assert info.file_size == len(data)


def test_chunk_sizes_within_bounds():
    data = np.random.default_rng(3).bytes(4_000_000) + bytes(600_000)
    ends = chunk_boundaries(data)
    sizes = np.diff([0, *ends])
    assert ends[-1] == len(data)
    assert sizes[:-1].min() >= MIN_CHUNK and sizes.max() <= MAX_CHUNK
    assert 40_000 < np.mean(sizes[:-6]) < 100_000  # target 64 KiB on random data
    # Content-defined: an insertion moves only the boundaries near it.
    edited = data[:1_000_000] + b"inserted" + data[1_000_000:]
    shifted = {e + 8 for e in ends if e > 1_500_000}
    assert shifted <= set(chunk_boundaries(edited))


@pytest.mark.parametrize("scheme", [NONE, LZ4, BG4_LZ4])
def test_xorb_roundtrip_and_hash(scheme):
    rng = np.random.default_rng(scheme)
    chunks = [rng.standard_normal(3000).astype(np.float32).tobytes(), bytes(70_000), b"x" * 5]
    body = build_xorb(chunks, scheme)
    expected = merkle_root([(chunk_hash(c), len(c)) for c in chunks])
    infos = parse_xorb(body, expected)
    assert [i.hash for i in infos] == [chunk_hash(c) for c in chunks]
    assert [i.size for i in infos] == [len(c) for c in chunks]
    assert infos[0].offset == 0 and infos[1].offset > 8


def test_full_xorb_of_incompressible_chunks_accepted():
    # hf_xet fills a xorb with 64 MiB of chunk data; the headers come on top.
    block = np.random.default_rng(0).bytes(MAX_CHUNK)
    chunks = [block[i:] + block[:i] for i in range(512)]
    body = build_xorb(chunks)
    assert len(body) > 64 * 1024 * 1024
    assert len(parse_xorb(body)) == 512
    with pytest.raises(XorbError, match="limit"):
        parse_xorb(body + build_xorb([b"x"] * ((MAX_XORB_BYTES - len(body)) // 9 + 1)))


def test_corrupt_xorbs_refused():
    chunks = [bytes(range(256)) * 40, b"second chunk" * 100]
    name = merkle_root([(chunk_hash(c), len(c)) for c in chunks])
    good = build_xorb(chunks, LZ4)
    parse_xorb(good, name)
    flipped = bytearray(build_xorb(chunks, NONE))
    flipped[100] ^= 1
    broken = {
        "flipped byte": bytes(flipped),
        "truncated": good[:-3],
        "bad version": b"\x01" + good[1:],
        "bad lz4": good[:8] + b"\xff" * (len(good) - 8),
        "unknown scheme": good[:4] + b"\x07" + good[5:],
        "empty": b"",
        "size lies": good[:5] + (5).to_bytes(3, "little") + good[8:],
    }
    for what, body in broken.items():
        with pytest.raises(XorbError):
            parse_xorb(body, name)
            pytest.fail(what)
    with pytest.raises(XorbError, match="hash"):
        parse_xorb(good, bytes(32))


def test_shard_roundtrip_and_dedup_answer():
    chunks = [(chunk_hash(b"a" * 10), 10), (chunk_hash(b"b" * 20), 20)]
    xorb = merkle_root(chunks)
    term = Term(xorb, 0, 2, 30, verification_hash(h for h, _ in chunks))
    sha = hashlib.sha256(b"a" * 10 + b"b" * 20).digest()
    cas = CasInfo(xorb, [(chunks[0][0], 0, 10), (chunks[1][0], 10, 10)], 30, 0)
    shard = parse_shard(build_shard([FileInfo(file_hash(chunks), [term], sha)], [cas]))
    assert shard.files[0].terms == [term] and shard.files[0].sha256 == sha
    assert shard.xorbs == [cas]
    answer = parse_shard(dedup_shard([cas], bytes(range(32))))
    assert answer.files == [] and answer.xorbs[0].xorb == xorb
    assert answer.xorbs[0].chunks[0][0] != chunks[0][0]  # keyed with the HMAC key
    with pytest.raises(ShardError):
        parse_shard(b"not a shard" * 10)
    with pytest.raises(ShardError):
        parse_shard(build_shard([FileInfo(file_hash(chunks), [term], sha)], [cas])[:-20])
