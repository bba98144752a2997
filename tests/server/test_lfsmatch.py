from cove.server.config import DEFAULT_LFS_PATTERNS
from cove.server.lfsmatch import lfs_patterns, matches

ATTRS = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in DEFAULT_LFS_PATTERNS)


def test_default_patterns_send_weights_to_lfs():
    patterns = lfs_patterns(ATTRS)
    for path in ("model.safetensors", "sub/dir/pytorch_model.bin", "m.gguf",
                 "data/train-00000.parquet", "saved_model/variables/v.data", "x.tar.gz",
                 "runs/events.out.tfevents.123"):
        assert matches(patterns, path), path
    for path in ("config.json", "README.md", "tokenizer.json", "saved_model.txt"):
        assert not matches(patterns, path), path


def test_comments_and_unset_filters():
    patterns = lfs_patterns("# *.json filter=lfs\n*.json filter=lfs\n*.json -filter\n*.csv filter=lfs\n")
    assert patterns == ["*.csv"]
    assert matches(patterns, "a/b.csv") and not matches(patterns, "a.json")


def test_patterns_with_slashes_match_from_the_root():
    patterns = lfs_patterns("data/*.txt filter=lfs\nlogs/** filter=lfs\n")
    assert matches(patterns, "data/a.txt")
    assert not matches(patterns, "other/data/a.txt")
    assert not matches(patterns, "data/sub/a.txt")
    assert matches(patterns, "logs/x/y/z.log")
