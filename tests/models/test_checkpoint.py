"""Checkpoint loading: malformed files fail with a clear CheckpointError, good ones load right.

Malformed: truncated or lying safetensors headers, pickles that would run code, pickles that
are not weights, shard indexes that point outside their folder or at missing shards, shapes
or dtypes the model cannot take. Each error names the file and the problem; nothing crashes,
hangs, allocates the sizes a header claims, or runs code from the file.

Good: zero-copy loading (parameters are views into the file mapping, measured in a fresh
process), dtype casting, sharded checkpoints, tied weights, .bin files; transformers is the
oracle for what a checkpoint means.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import resource
import shlex
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cove.models import (
    AutoModel,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    CheckpointError,
)
from cove.models.checkpoint import (
    MissingShardError,
    read_index,
    read_safetensors,
    read_torch_bin,
)

REPO = Path(__file__).resolve().parents[2]
TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64)


def tiny_config(**overrides) -> BertConfig:
    return BertConfig(**{**TINY, **overrides})


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    """A tiny BertModel saved by Cove: config.json + model.safetensors."""
    torch.manual_seed(0)
    folder = tmp_path / "tiny"
    BertModel(tiny_config()).save_pretrained(folder)
    return folder


def header_and_data(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_safetensors(path: Path, header: dict | bytes, data: bytes,
                      header_len: int | None = None) -> Path:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(body) if header_len is None else header_len
    path.write_bytes(n.to_bytes(8, "little") + body + data)
    return path


def assert_clear(excinfo, path: Path, *fragments: str) -> str:
    """The error is a CheckpointError (a ValueError) naming the file and the problem."""
    assert isinstance(excinfo.value, CheckpointError)
    assert isinstance(excinfo.value, ValueError)
    message = str(excinfo.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.fixture
def small_file(tmp_path) -> tuple[Path, dict, bytes]:
    path = tmp_path / "good.safetensors"
    save_file({"a": torch.arange(12, dtype=torch.float32).view(3, 4), "b": torch.ones(5)},
              str(path))
    header, data = header_and_data(path)
    return path, header, data


# -- malformed safetensors ------------------------------------------------------------------

@pytest.mark.parametrize("cut", ["empty", "in-length", "length-only", "mid-header",
                                 "header-only", "mid-data", "last-byte"])
def test_truncated_safetensors(tiny_folder, cut):
    path = tiny_folder / "model.safetensors"
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    keep = {"empty": 0, "in-length": 4, "length-only": 8, "mid-header": 8 + n // 2,
            "header-only": 8 + n, "mid-data": (8 + n + len(raw)) // 2,
            "last-byte": len(raw) - 1}[cut]
    path.write_bytes(raw[:keep])
    with pytest.raises(CheckpointError) as excinfo:
        read_safetensors(path)
    assert_clear(excinfo, path, "not a valid safetensors file")
    # The same through from_pretrained, which names the file too.
    with pytest.raises(CheckpointError) as excinfo:
        AutoModel.from_pretrained(tiny_folder)
    assert_clear(excinfo, path)


def test_offsets_beyond_the_file(small_file, tmp_path):
    _, header, data = small_file
    header["a"]["data_offsets"] = [0, 10**12]
    path = write_safetensors(tmp_path / "beyond.safetensors", header, data)
    with pytest.raises(CheckpointError) as excinfo:
        read_safetensors(path)
    assert_clear(excinfo, path, "invalid")


@pytest.mark.parametrize("offsets", [[0, 20], [8, 28], [40, 60]])
def test_overlapping_offsets(small_file, tmp_path, offsets):
    _, header, data = small_file
    header["b"]["data_offsets"] = offsets  # overlaps "a" at [0, 48]
    path = write_safetensors(tmp_path / "overlap.safetensors", header, data)
    with pytest.raises(CheckpointError) as excinfo:
        read_safetensors(path)
    assert_clear(excinfo, path, "invalid offset")


def test_offsets_that_disagree_with_the_shape(small_file, tmp_path):
    _, header, data = small_file
    header["a"]["shape"] = [3, 5]  # 60 bytes claimed, 48 given
    path = write_safetensors(tmp_path / "shape.safetensors", header, data)
    with pytest.raises(CheckpointError) as excinfo:
        read_safetensors(path)
    assert_clear(excinfo, path)


@pytest.mark.parametrize("shape", [[2**40, 2**40], [2**62, 4], [-3, -4]])
def test_absurd_shapes(small_file, tmp_path, shape):
    _, header, data = small_file
    header["a"]["shape"] = shape
    path = write_safetensors(tmp_path / "absurd-shape.safetensors", header, data)
    with pytest.raises(CheckpointError) as excinfo:
        read_safetensors(path)
    assert_clear(excinfo, path)


@pytest.mark.parametrize("header_len", ["file+100", 2**31, 2**62, 2**64 - 1])
def test_header_length_lies(small_file, tmp_path, header_len):
    path, header, data = small_file
    size = path.stat().st_size
    n = size + 100 if header_len == "file+100" else header_len
    bad = write_safetensors(tmp_path / "hlen.safetensors", header, data, header_len=n)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError) as excinfo:
        read_safetensors(bad)
    assert_clear(excinfo, bad, "header")
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 64 * 1024  # the claimed length was never allocated


@pytest.mark.parametrize("body", [b"{not json}", b"[]", b'"a string"', b"\xff\xfe{}",
                                  b'{"a": 5}', b'{"a": {"dtype": "F32"}}'])
def test_invalid_json_header(tmp_path, body):
    path = write_safetensors(tmp_path / "json.safetensors", body, b"")
    with pytest.raises(CheckpointError) as excinfo:
        read_safetensors(path)
    assert_clear(excinfo, path, "not a valid safetensors file")


@pytest.mark.parametrize("second", ["overlapping", "identical"])
def test_duplicate_keys_in_header(small_file, tmp_path, second):
    _, header, data = small_file
    a, b = json.dumps(header["a"]), json.dumps(header["b"])
    # "a" twice: the second overlaps "b", or repeats the first (which the library accepts;
    # an ambiguous header is refused all the same).
    again = b if second == "overlapping" else a
    body = f'{{"a": {a}, "b": {b}, "a": {again}}}'.encode()
    path = write_safetensors(tmp_path / "dup.safetensors", body, data)
    with pytest.raises(CheckpointError) as excinfo:
        read_safetensors(path)
    message = assert_clear(excinfo, path)
    if second == "identical":
        assert "duplicate key 'a'" in message


@pytest.mark.parametrize("dtype,expected", [("Q4", "unknown variant"),
                                            ("C64", "unsupported dtype C64")])
def test_unknown_dtype(small_file, tmp_path, dtype, expected):
    _, header, data = small_file
    header["a"]["dtype"] = dtype
    header["a"]["shape"] = [6]  # 48 bytes of complex64
    path = write_safetensors(tmp_path / "dtype.safetensors", header, data)
    with pytest.raises(CheckpointError) as excinfo:
        read_safetensors(path)
    assert_clear(excinfo, path, expected)


def test_trailing_bytes_after_the_data(small_file, tmp_path):
    _, header, data = small_file
    path = write_safetensors(tmp_path / "trailing.safetensors", header, data + b"junk")
    with pytest.raises(CheckpointError) as excinfo:
        read_safetensors(path)
    assert_clear(excinfo, path)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reader", [read_safetensors, read_torch_bin])
def test_not_a_regular_file(tmp_path, reader):
    with pytest.raises(CheckpointError) as excinfo:
        reader(tmp_path)
    assert_clear(excinfo, tmp_path)
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(CheckpointError) as excinfo:
        reader(missing)
    assert_clear(excinfo, missing)
    if hasattr(os, "mkfifo"):  # opening a FIFO with no writer would block forever
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        with pytest.raises(CheckpointError) as excinfo:
            reader(fifo)
        assert_clear(excinfo, fifo, "not a regular file")
    if Path("/dev/zero").exists():  # an endless device
        with pytest.raises(CheckpointError) as excinfo:
            reader("/dev/zero")
        assert_clear(excinfo, Path("/dev/zero"), "not a regular file")


def test_zero_size_tensors_are_kept(tmp_path):
    # A file whose tensors are all empty has no data section: they must still be returned.
    path = tmp_path / "empty-tensors.safetensors"
    save_file({"e": torch.zeros(0, 4), "f": torch.zeros(0, dtype=torch.int64)}, str(path))
    state = read_safetensors(path)
    assert {k: (tuple(v.shape), v.dtype) for k, v in state.items()} == {
        "e": ((0, 4), torch.float32), "f": ((0,), torch.int64)}
    assert read_safetensors(write_safetensors(tmp_path / "none.safetensors",
                                              {"__metadata__": {"format": "pt"}}, b"")) == {}


def test_every_dtype_round_trips(tmp_path):
    tensors = {
        "f64": torch.randn(3, dtype=torch.float64), "f32": torch.randn(2, 3),
        "f16": torch.randn(5).half(), "bf16": torch.randn(7).bfloat16(),
        "i64": torch.arange(3), "i32": torch.arange(3, dtype=torch.int32),
        "i16": torch.arange(3, dtype=torch.int16), "i8": torch.arange(3, dtype=torch.int8),
        "u8": torch.arange(3, dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
        "f8": torch.randn(4).to(torch.float8_e4m3fn),
    }
    path = tmp_path / "dtypes.safetensors"
    save_file(tensors, str(path))
    state = read_safetensors(path)
    reference = load_file(str(path))
    assert set(state) == set(tensors)
    for name, tensor in state.items():
        assert tensor.dtype == reference[name].dtype
        assert torch.equal(tensor.view(torch.uint8), reference[name].view(torch.uint8)), name


# -- pickles: never run, and only tensors --------------------------------------------------

class _RunsShell:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class _RunsPython:
    """Unpickling this runs Python code that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _evil_files(folder: Path, payload_class, marker: Path) -> list[Path]:
    payload = payload_class(marker)
    files = []
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):  # a bare pickle
        path = folder / f"raw-p{protocol}.bin"
        path.write_bytes(pickle.dumps({"w": payload}, protocol=protocol))
        files.append(path)
    path = folder / "zip.bin"  # torch.save's zip format, the payload beside a real tensor
    torch.save({"weight": torch.ones(2), "x": payload}, path)
    files.append(path)
    path = folder / "legacy.bin"  # torch.save's pre-1.6 format
    torch.save({"weight": torch.ones(2), "x": payload}, path,
               _use_new_zipfile_serialization=False)
    files.append(path)
    return files


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("payload_class", [_RunsShell, _RunsPython])
def test_pickle_that_runs_code_is_refused(tmp_path, payload_class):
    # The payload is live: plain pickle.loads runs it.
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(payload_class(control)))
    assert control.exists()

    marker = tmp_path / "marker"
    for path in _evil_files(tmp_path, payload_class, marker):
        with pytest.raises(CheckpointError) as excinfo:
            read_torch_bin(path)
        message = assert_clear(excinfo, path, "not a plain weights file", "nothing in it was run")
        assert "weights_only` set to `False`" not in message  # no advice to turn safety off
        assert not marker.exists(), path

    # Through from_pretrained as well (pytorch_model.bin is the only weights file).
    folder = tmp_path / "model"
    tiny_config().save_pretrained(folder)
    torch.save({"w": payload_class(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as excinfo:
        AutoModel.from_pretrained(folder)
    assert_clear(excinfo, folder / "pytorch_model.bin")
    assert not marker.exists()


@pytest.mark.parametrize("obj", [[torch.ones(2)], 5, "weights", None, (torch.ones(1),),
                                 {"a": 1}, {1: torch.ones(1)}, {"a": [torch.ones(1)]}],
                         ids=["list", "int", "str", "none", "tuple", "dict-int", "int-key",
                              "dict-list"])
def test_valid_pickle_that_is_not_weights(tmp_path, obj):
    path = tmp_path / "not-weights.bin"
    torch.save(obj, path)
    with pytest.raises(CheckpointError) as excinfo:
        read_torch_bin(path)
    assert_clear(excinfo, path, "not a mapping of parameter names to tensors")


@pytest.mark.parametrize("content", [b"", b"hello, this is not a pickle", b"\x80\x02}q\x00.",
                                     bytes(range(256)) * 4], ids=["empty", "text", "bare-dict",
                                                                  "binary"])
def test_unreadable_bin(tmp_path, content):
    path = tmp_path / "bad.bin"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as excinfo:
        read_torch_bin(path)
    message = assert_clear(excinfo, path)
    if not content:
        assert "empty" in message


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_bin(tmp_path, legacy):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.randn(64, 64)}, path, _use_new_zipfile_serialization=not legacy)
    raw = path.read_bytes()
    for keep in (len(raw) // 3, len(raw) - 3):
        path.write_bytes(raw[:keep])
        with pytest.raises(CheckpointError) as excinfo:
            read_torch_bin(path)
        assert_clear(excinfo, path)


def _pickle_claiming_storage(numel: int, legacy: bool) -> bytes:
    """A weights pickle whose one tensor claims a float storage of `numel` elements."""
    sentinel = object()

    class Tensor:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2,
                    (sentinel, 0, (numel,), (1,), False, collections.OrderedDict()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if obj is sentinel:
                return ("storage", torch.FloatStorage, "0", "cpu", numel) + (
                    (None,) if legacy else ())
            return None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"w": Tensor()})
    return buf.getvalue()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_bin_claiming_a_huge_storage(tmp_path, legacy):
    """A .bin whose pickle claims a 4 TiB tensor but holds 16 bytes: refused, little memory."""
    numel = 2**40
    buf = io.BytesIO()
    if legacy:
        for obj in (0x1950A86A20F9469CFC6C, 1001,
                    {"protocol_version": 1001, "little_endian": True,
                     "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(obj, buf, protocol=2)
        buf.write(_pickle_claiming_storage(numel, legacy=True))
        pickle.dump(["0"], buf, protocol=2)
        buf.write(struct.pack("<q", 4) + bytes(16))
    else:
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("archive/data.pkl", _pickle_claiming_storage(numel, legacy=False))
            zf.writestr("archive/byteorder", "little")
            zf.writestr("archive/data/0", bytes(16))
            zf.writestr("archive/version", "3\n")
    path = tmp_path / "huge.bin"
    path.write_bytes(buf.getvalue())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError) as excinfo:
        read_torch_bin(path)
    assert_clear(excinfo, path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB


# -- sharded indexes ---------------------------------------------------------------------

def _shard_folder(tmp_path: Path, max_shard_size="20KB") -> Path:
    torch.manual_seed(0)
    folder = tmp_path / "sharded"
    BertModel(tiny_config()).save_pretrained(folder, max_shard_size=max_shard_size)
    assert (folder / "model.safetensors.index.json").exists()
    assert not (folder / "model.safetensors").exists()
    return folder


@pytest.mark.parametrize("shard", ["../outside.safetensors", "../../etc/passwd",
                                   "sub/../../outside.safetensors", "/etc/passwd",
                                   "..\\outside.safetensors", "C:outside.safetensors",
                                   "..", ".", ""])
def test_index_naming_a_shard_outside_its_folder(tmp_path, shard):
    folder = _shard_folder(tmp_path)
    # The file the index points at exists: only the rule keeps it out.
    save_file({"x": torch.ones(1)}, str(tmp_path / "outside.safetensors"))
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = shard
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError) as excinfo:
        read_index(index_path)
    assert_clear(excinfo, index_path, "outside its folder")
    with pytest.raises(CheckpointError) as excinfo:
        AutoModel.from_pretrained(folder)
    assert_clear(excinfo, index_path, "outside its folder")


def test_index_naming_a_missing_shard(tmp_path):
    folder = _shard_folder(tmp_path)
    index_path = folder / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
    (folder / shards[-1]).unlink()
    with pytest.raises(MissingShardError) as excinfo:
        AutoModel.from_pretrained(folder)
    assert_clear(excinfo, index_path, shards[-1], "missing")
    assert isinstance(excinfo.value, FileNotFoundError)  # what transformers users catch


def test_shards_holding_the_same_tensor(tmp_path):
    folder = _shard_folder(tmp_path)
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    first = load_file(str(shards[0]))
    last = load_file(str(shards[-1]))
    name = next(iter(first))
    last[name] = first[name] + 1
    save_file(last, str(shards[-1]))
    with pytest.raises(CheckpointError) as excinfo:
        AutoModel.from_pretrained(folder)
    assert_clear(excinfo, shards[-1], name, shards[0].name)


@pytest.mark.parametrize("content", ["", "{", "[]", '{"metadata": {}}', '{"weight_map": []}',
                                     '{"weight_map": {"a": 5}}', '{"weight_map": {}}',
                                     '{"weight_map": "model.safetensors"}'])
def test_invalid_index(tmp_path, content):
    folder = _shard_folder(tmp_path)
    index_path = folder / "model.safetensors.index.json"
    index_path.write_text(content)
    with pytest.raises(CheckpointError) as excinfo:
        AutoModel.from_pretrained(folder)
    assert_clear(excinfo, index_path)


# -- the checkpoint against the model ------------------------------------------------------

def test_wrong_shapes(tmp_path):
    import transformers

    torch.manual_seed(0)
    folder = tmp_path / "two-labels"
    saved = BertForSequenceClassification(tiny_config(num_labels=2))
    saved.save_pretrained(folder)
    five = tiny_config(num_labels=5)
    with pytest.raises(CheckpointError) as excinfo:
        BertForSequenceClassification.from_pretrained(folder, config=five)
    message = assert_clear(excinfo, folder / "model.safetensors", "ignore_mismatched_sizes")
    assert "classifier.weight: checkpoint (2, 32), model (5, 32)" in message
    assert "classifier.bias: checkpoint (2,), model (5,)" in message

    model, info = BertForSequenceClassification.from_pretrained(
        folder, config=five, ignore_mismatched_sizes=True, output_loading_info=True)
    assert model.classifier.weight.shape == (5, 32) and model.classifier.bias.shape == (5,)
    assert model.classifier.weight.device.type == "cpu"
    assert torch.count_nonzero(model.classifier.weight) > 0  # re-initialised, not left empty
    assert torch.equal(model.classifier.bias, torch.zeros(5))
    assert sorted(info["mismatched_keys"]) == [("classifier.bias", (2,), (5,)),
                                               ("classifier.weight", (2, 32), (5, 32))]
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    for name, tensor in saved.state_dict().items():
        if not name.startswith("classifier."):
            assert torch.equal(model.state_dict()[name], tensor), name

    # transformers reports the same keys, as mismatched and not missing.
    _, ref_info = transformers.BertForSequenceClassification.from_pretrained(
        folder, num_labels=5, ignore_mismatched_sizes=True, output_loading_info=True)
    assert {k for k, *_ in ref_info["mismatched_keys"]} == {k for k, *_ in
                                                           info["mismatched_keys"]}
    assert not ref_info["missing_keys"]


def test_integer_tensor_for_a_float_weight(tiny_folder):
    path = tiny_folder / "model.safetensors"
    state = load_file(str(path))
    state["embeddings.word_embeddings.weight"] = torch.ones(99, 32, dtype=torch.int64)
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as excinfo:
        AutoModel.from_pretrained(tiny_folder)
    assert_clear(excinfo, path, "embeddings.word_embeddings.weight", "int64")


# -- good checkpoints ----------------------------------------------------------------------

def _file_mappings(path: Path) -> list[tuple[int, int]]:
    ranges = []
    target = str(path.resolve())
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() == target:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((start, end))
    return ranges


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_parameters_are_views_of_the_file_mapping(tiny_folder):
    path = tiny_folder / "model.safetensors"
    model = BertModel.from_pretrained(tiny_folder)
    ranges = _file_mappings(path)
    assert ranges, "the checkpoint is not memory-mapped"
    for name, param in model.named_parameters():
        ptr = param.data_ptr()
        assert any(start <= ptr and ptr + param.nbytes <= end for start, end in ranges), name
    # Writing to a parameter (training) never writes to the file: the mapping is private.
    before = path.read_bytes()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)
    assert path.read_bytes() == before


_RSS_PROBE = textwrap.dedent("""
    import json, sys
    import torch
    from cove.models import BertModel

    def status():
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0]) * 1024
        return out

    torch.set_num_threads(1)
    # Warm up on a tiny checkpoint first: one-time costs (lazy imports, allocator pools) are
    # not what this measures.
    tiny = BertModel.from_pretrained(sys.argv[2])
    float(sum(p.sum() for p in tiny.parameters()))
    del tiny
    try:  # reset the peak, so VmHWM below is the peak of the load alone
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = status()
    model = BertModel.from_pretrained(sys.argv[1])
    total = sum(float(p.detach().sum()) for p in model.parameters())  # touch every page
    after = status()
    print(json.dumps({"before": before, "after": after, "total": total}))
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_loading_holds_about_one_copy(tmp_path, tiny_folder):
    """A ~100 MB float32 checkpoint raises RSS by about its size, and that memory is the
    file's own pages (RssFile), not a private copy (RssAnon)."""
    torch.manual_seed(0)
    config = tiny_config(vocab_size=40000, hidden_size=512, num_attention_heads=8,
                         intermediate_size=2048, num_hidden_layers=2, max_position_embeddings=512)
    folder = tmp_path / "big"
    BertModel(config).save_pretrained(folder)
    size = (folder / "model.safetensors").stat().st_size
    assert size > 95e6
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(folder), str(tiny_folder)], capture_output=True,
                         text=True, timeout=300, env=env, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    before, after = report["before"], report["after"]
    peak = max(after["VmHWM"], after["VmRSS"]) - before["VmRSS"]
    steady = after["VmRSS"] - before["VmRSS"]
    anon = after["RssAnon"] - before["RssAnon"]
    assert 0.8 * size < steady, report  # every page was touched: the measure works
    assert peak < 1.5 * size, report
    assert anon < 0.3 * size, report  # zero-copy: no private copy of the weights


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, "bfloat16", "float16"])
def test_dtype_casting(tiny_folder, dtype):
    import transformers

    want = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    model = BertModel.from_pretrained(tiny_folder, dtype=dtype)
    reference = transformers.BertModel.from_pretrained(tiny_folder, dtype=want)
    saved = load_file(str(tiny_folder / "model.safetensors"))
    assert model.dtype == want and model.config.dtype == str(want).removeprefix("torch.")
    ref_params = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        assert param.dtype == want, name
        assert torch.equal(param, saved[name].to(want)), name
        assert torch.equal(param, ref_params[name]), name
    assert model.embeddings.position_ids.dtype == torch.int64  # buffers keep their dtype
    ids = torch.tensor([[2, 5, 7, 11, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).last_hidden_state
        theirs = reference(ids, attention_mask=mask).last_hidden_state
    assert ours.dtype == want
    torch.testing.assert_close(ours[:, :4], theirs[:, :4], atol=2e-2, rtol=2e-2)


def test_sharded_round_trip_with_transformers(tmp_path):
    import transformers

    torch.manual_seed(0)
    ours_folder = _shard_folder(tmp_path, max_shard_size="20KB")
    shards = sorted(ours_folder.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2
    model = BertModel.from_pretrained(ours_folder)
    reference = transformers.BertModel.from_pretrained(ours_folder)
    ref_state = reference.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, ref_state[name]), name

    # And a sharded checkpoint written by transformers loads in Cove.
    theirs_folder = tmp_path / "theirs"
    reference.save_pretrained(theirs_folder, max_shard_size="20KB")
    assert (theirs_folder / "model.safetensors.index.json").exists()
    again = BertModel.from_pretrained(theirs_folder)
    for name, tensor in again.state_dict().items():
        assert torch.equal(tensor, ref_state[name]), name


def test_bin_checkpoint_loads(tmp_path):
    import transformers

    torch.manual_seed(0)
    reference = transformers.BertModel(transformers.BertConfig(**TINY))
    folder = tmp_path / "bin"
    reference.config.save_pretrained(folder)
    torch.save(reference.state_dict(), folder / "pytorch_model.bin")
    model = AutoModel.from_pretrained(folder)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


@pytest.mark.parametrize("tie", [True, False])
def test_tied_weights(tmp_path, tie):
    import transformers

    torch.manual_seed(0)
    reference = transformers.BertForMaskedLM(transformers.BertConfig(
        **TINY, tie_word_embeddings=tie)).eval()
    theirs = tmp_path / "theirs"
    reference.save_pretrained(theirs)

    model = BertForMaskedLM.from_pretrained(theirs)
    decoder = model.cls.predictions.decoder
    embeddings = model.bert.embeddings.word_embeddings
    if tie:
        assert decoder.weight is embeddings.weight
        assert decoder.weight.data_ptr() == embeddings.weight.data_ptr()
    else:
        assert decoder.weight.data_ptr() != embeddings.weight.data_ptr()
        assert torch.equal(decoder.weight, reference.cls.predictions.decoder.weight)
    assert decoder.bias is model.cls.predictions.bias

    ours = tmp_path / "ours"
    model.save_pretrained(ours)
    keys = set(load_file(str(ours / "model.safetensors")))
    assert ("cls.predictions.decoder.weight" in keys) == (not tie)  # the duplicate is dropped
    assert "cls.predictions.decoder.bias" not in keys

    reloaded = transformers.BertForMaskedLM.from_pretrained(ours)
    ref_decoder = reloaded.cls.predictions.decoder
    ref_embeddings = reloaded.bert.embeddings.word_embeddings
    assert (ref_decoder.weight.data_ptr() == ref_embeddings.weight.data_ptr()) == tie
    assert torch.equal(ref_decoder.weight, decoder.weight)
    ids = torch.tensor([[2, 5, 7, 11, 13]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reloaded(ids).logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-5, rtol=0)
