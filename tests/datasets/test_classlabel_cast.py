"""Casting to and from ClassLabel, compared with Hugging Face `datasets` 5 on the same data."""

from __future__ import annotations

import pytest

import datasets as hf
from cove.datasets import (
    ClassLabel,
    Dataset,
    DatasetDict,
    Features,
    IterableDataset,
    IterableDatasetDict,
    List,
    Value,
    load_dataset,
)

NAMES = ["negative", "positive"]
ROWS = {"text": ["a", "b", "c", "d"], "label": ["positive", "negative", None, " positive "]}


@pytest.fixture(autouse=True)
def _caches(tmp_path, monkeypatch):
    monkeypatch.setenv("COVE_DATASETS_CACHE", str(tmp_path / "cove-cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def both(data: dict, features: dict | None = None) -> tuple[Dataset, hf.Dataset]:
    """The same rows as a cove and a datasets Dataset (features as Value dtype strings)."""
    if features is None:
        return Dataset.from_dict(data), hf.Dataset.from_dict(data)
    ours = Features({k: Value(v) for k, v in features.items()})
    theirs = hf.Features({k: hf.Value(v) for k, v in features.items()})
    return Dataset.from_dict(data, features=ours), hf.Dataset.from_dict(data, features=theirs)


@pytest.mark.parametrize("label", [
    ["positive", "negative", None, " positive "],  # names, a null, spaces stripped
    ["1", "0", "-1", None],  # ids written as text (a CSV of ids)
])
def test_cast_column_of_strings_matches_datasets(label):
    ours, theirs = both({"label": label})
    ours_cast = ours.cast_column("label", ClassLabel(names=NAMES))
    theirs_cast = theirs.cast_column("label", hf.ClassLabel(names=NAMES))
    assert ours_cast["label"][:] == theirs_cast["label"][:]
    assert ours_cast.features.to_dict() == theirs_cast.features.to_dict()
    assert ours_cast._fingerprint != ours._fingerprint


def test_cast_with_features_and_ids_already_ints():
    ours, theirs = both(ROWS)
    features = {"text": Value("string"), "label": ClassLabel(names=NAMES)}
    hf_features = {"text": hf.Value("string"), "label": hf.ClassLabel(names=NAMES)}
    assert ours.cast(Features(features))["label"][:] == \
        theirs.cast(hf.Features(hf_features))["label"][:] == [1, 0, None, 1]

    for dtype in ("int64", "int32"):
        ours, theirs = both({"label": [1, 0, None, -1]}, {"label": dtype})
        assert ours.cast_column("label", ClassLabel(names=NAMES))["label"][:] == \
            theirs.cast_column("label", hf.ClassLabel(names=NAMES))["label"][:]


def test_a_name_not_in_the_list_is_a_clear_error():
    ours, theirs = both({"label": ["positive", "neutral", "mixed", "neutral"]})
    with pytest.raises(ValueError, match="Invalid string class label neutral"):
        theirs.cast_column("label", hf.ClassLabel(names=NAMES))
    # the same error type; ours also names the column and the valid names
    with pytest.raises(ValueError) as err:
        ours.cast_column("label", ClassLabel(names=NAMES))
    message = str(err.value)
    assert "'neutral'" in message and "column 'label'" in message
    assert "['negative', 'positive']" in message and "1 other" in message
    # an id outside the names is not an id, as in datasets
    for values in (["5"], ["-2"]):
        with pytest.raises(ValueError, match=f"Invalid string class label {values[0]}"):
            hf.Dataset.from_dict({"label": values}).cast_column("label", hf.ClassLabel(names=NAMES))
        with pytest.raises(ValueError, match=f"Invalid string class label '{values[0]}'"):
            Dataset.from_dict({"label": values}).cast_column("label", ClassLabel(names=NAMES))


def test_integers_out_of_range():
    ours, theirs = both({"label": [1, 2]}, {"label": "int32"})
    with pytest.raises(ValueError, match="Class label 2 greater than configured num_classes 2"):
        theirs.cast_column("label", hf.ClassLabel(names=NAMES))
    with pytest.raises(ValueError, match=r"Class label 2 in column 'label' is out of range"):
        ours.cast_column("label", ClassLabel(names=NAMES))
    # datasets skips the check for int64 columns and below -1; cove checks every integer, as
    # its from_dict(features=) does
    ours, theirs = both({"label": [1, -2]}, {"label": "int64"})
    assert theirs.cast_column("label", hf.ClassLabel(names=NAMES))["label"][:] == [1, -2]
    with pytest.raises(ValueError, match=r"Class label -2 .* ids are 0\.\.1, or -1"):
        ours.cast_column("label", ClassLabel(names=NAMES))


def test_class_label_back_to_string_gives_the_ids_as_text():
    ours, theirs = both(ROWS)
    ours = ours.cast_column("label", ClassLabel(names=NAMES))
    theirs = theirs.cast_column("label", hf.ClassLabel(names=NAMES))
    assert ours.cast_column("label", Value("string"))["label"][:] == \
        theirs.cast_column("label", hf.Value("string"))["label"][:] == ["1", "0", None, "1"]


def test_nested_class_labels_match_datasets():
    data = {"tags": [["positive"], ["negative", "positive"], None, []],
            "s": [{"l": "positive"}, {"l": None}, None, {"l": "negative"}]}
    ours, theirs = both(data)
    ours = ours.cast(Features({"tags": List(ClassLabel(names=NAMES)),
                               "s": {"l": ClassLabel(names=NAMES)}}))
    theirs = theirs.cast(hf.Features({"tags": hf.List(hf.ClassLabel(names=NAMES)),
                                      "s": {"l": hf.ClassLabel(names=NAMES)}}))
    assert ours.to_dict() == theirs.to_dict()
    # sliced views (an offset into the Arrow arrays) keep their rows
    sliced = Dataset(Dataset.from_dict(data).data.slice(1, 3))
    cast = sliced.cast_column("tags", List(ClassLabel(names=NAMES)))
    assert cast["tags"][:] == [[0, 1], None, []]
    with pytest.raises(ValueError, match=r"'zz' in column 'tags\[\]'"):
        Dataset.from_dict({"tags": [["zz"]]}).cast_column("tags", List(ClassLabel(names=NAMES)))


def test_dataset_dict_cast_matches_datasets():
    ours, theirs = both(ROWS)
    ours = DatasetDict({"train": ours, "test": ours.select([0, 1])})
    theirs = hf.DatasetDict({"train": theirs, "test": theirs.select([0, 1])})
    ours = ours.cast_column("label", ClassLabel(names=NAMES))
    theirs = theirs.cast_column("label", hf.ClassLabel(names=NAMES))
    assert {k: v.to_dict() for k, v in ours.items()} == {k: v.to_dict() for k, v in theirs.items()}
    features = Features({"text": Value("string"), "label": ClassLabel(names=NAMES)})
    assert DatasetDict({"x": Dataset.from_dict(ROWS)}).cast(features)["x"]["label"][:] == \
        [1, 0, None, 1]


def test_iterable_cast_matches_datasets():
    rows = [dict(zip(ROWS, values, strict=True)) for values in zip(*ROWS.values(), strict=True)]
    string = {"text": "string", "label": "string"}
    ours = IterableDataset.from_generator(
        lambda: iter(rows), features=Features({k: Value(v) for k, v in string.items()}))
    theirs = hf.IterableDataset.from_generator(
        lambda: iter(rows), features=hf.Features({k: hf.Value(v) for k, v in string.items()}))
    expected = list(theirs.cast_column("label", hf.ClassLabel(names=NAMES)))
    assert list(ours.cast_column("label", ClassLabel(names=NAMES))) == expected
    cast = IterableDatasetDict({"train": ours}).cast(
        Features({"text": Value("string"), "label": ClassLabel(names=NAMES)}))
    assert list(cast["train"]) == expected
    bad = IterableDataset.from_generator(lambda: iter([{"label": "zz"}]),
                                         features=Features({"label": Value("string")}))
    with pytest.raises(ValueError, match="'zz' in column 'label'.*names are"):
        list(bad.cast_column("label", ClassLabel(names=NAMES)))


@pytest.mark.parametrize("streaming", [False, True])
def test_load_dataset_with_class_label_features_matches_datasets(tmp_path, streaming):
    files = {
        "names.csv": "text,label\nx,positive\ny,negative\nz,\n",
        "ids.csv": "text,label\nx,1\ny,0\n",
        "names.jsonl": '{"text":"x","label":"positive"}\n{"text":"y","label":null}\n'
                       '{"text":"z"}\n',
        "ids.jsonl": '{"text":"x","label":1}\n{"text":"y","label":0}\n',
    }
    ours_features = Features({"text": Value("string"), "label": ClassLabel(names=NAMES)})
    hf_features = hf.Features({"text": hf.Value("string"), "label": hf.ClassLabel(names=NAMES)})
    for name, content in files.items():
        path = tmp_path / name
        path.write_text(content)
        kind = "csv" if name.endswith(".csv") else "json"
        ours = load_dataset(kind, data_files=str(path), features=ours_features, split="train",
                            streaming=streaming, cache_dir=str(tmp_path / "cove"))
        theirs = hf.load_dataset(kind, data_files=str(path), features=hf_features, split="train",
                                 streaming=streaming, cache_dir=str(tmp_path / "hf"))
        assert list(ours) == list(theirs), name
        if not streaming:
            assert ours.features.to_dict() == theirs.features.to_dict()

    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nx,positive\ny,neutral\n")
    with pytest.raises(Exception) as err:  # datasets wraps it in a DatasetGenerationError
        list(hf.load_dataset("csv", data_files=str(bad), features=hf_features, split="train",
                             streaming=streaming, cache_dir=str(tmp_path / "hf")))
    cause = err.value.__cause__ or err.value
    assert isinstance(cause, ValueError) and "Invalid string class label neutral" in str(cause)
    with pytest.raises(ValueError, match=r"'neutral' in column 'label' of .*bad\.csv.*"
                                         r"\['negative', 'positive'\]"):
        list(load_dataset("csv", data_files=str(bad), features=ours_features, split="train",
                          streaming=streaming, cache_dir=str(tmp_path / "cove")))
