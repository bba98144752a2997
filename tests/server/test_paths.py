import pytest

from cove.server.deps import clean_path
from cove.server.errors import HubError
from cove.server.routers.files import _parse_range


@pytest.mark.parametrize("path", ["a.txt", "dir/sub/file.bin", ".gitattributes", "a..b/c"])
def test_good_paths(path):
    assert clean_path(path) == path


@pytest.mark.parametrize(
    "path", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", ".git/config",
             "sub/.git/HEAD", "a\\b", "a/", "a\nb", "a\x7fb"]
)
def test_bad_paths_rejected(path):
    with pytest.raises(HubError) as e:
        clean_path(path)
    assert e.value.status == 400 and e.value.code == "InvalidPath"


def test_ranges():
    assert _parse_range(None, 100) is None
    assert _parse_range("bytes=10-", 100) == (10, 99)
    assert _parse_range("bytes=10-19", 100) == (10, 19)
    assert _parse_range("bytes=90-200", 100) == (90, 99)
    assert _parse_range("bytes=-5", 100) == (95, 99)
    assert _parse_range("bytes=0-1,5-6", 100) is None  # several ranges: whole file
    with pytest.raises(HubError) as e:
        _parse_range("bytes=100-", 100)
    assert e.value.status == 416
