"""Feature types: the schema of a dataset, mapped to Arrow types and to `datasets`' JSON.

A feature is a `Value`, `ClassLabel`, `List`, `LargeList`, `Array2D` or a dict of features
(an Arrow struct). `Features` is the top-level dict. The JSON form (`to_dict` / `from_dict`)
is byte-for-byte the one Hugging Face `datasets` 5 writes into `dataset_info.json` and into
the "huggingface" metadata of Arrow schemas, so files are readable by both libraries.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

# dtype strings whose Arrow name differs from `datasets`' name
_DTYPE_TO_PA = {
    "float": pa.float32(),
    "float16": pa.float16(),
    "float32": pa.float32(),
    "double": pa.float64(),
    "float64": pa.float64(),
    "date32": pa.date32(),
    "date64": pa.date64(),
    "null": pa.null(),
    "bool": pa.bool_(),
}
_PA_NAME_TO_DTYPE = {
    "halffloat": "float16",
    "float": "float32",
    "double": "float64",
    "date32[day]": "date32",
    "date64[ms]": "date64",
}


def _dtype_to_pa(dtype: str) -> pa.DataType:
    """Arrow type of a `Value` dtype string ("int64", "string", "timestamp[us, tz=UTC]" ...)."""
    if dtype in _DTYPE_TO_PA:
        return _DTYPE_TO_PA[dtype]
    factory = getattr(pa, dtype, None)
    if factory is not None and callable(factory) and dtype.isidentifier():
        try:
            value = factory()
        except TypeError:
            value = None
        if isinstance(value, pa.DataType):
            return value
    # parametrised types: timestamp[unit, tz=...], time32[unit], duration[unit], decimal128(p, s)
    try:
        if dtype.startswith("timestamp[") and dtype.endswith("]"):
            unit, _, tz = dtype[len("timestamp[") : -1].partition(",")
            tz = tz.strip()
            return pa.timestamp(unit.strip(), tz=tz[len("tz=") :] if tz.startswith("tz=") else None)
        for name in ("time32", "time64", "duration"):
            if dtype.startswith(name + "[") and dtype.endswith("]"):
                return getattr(pa, name)(dtype[len(name) + 1 : -1])
        for name in ("decimal128", "decimal256"):
            if dtype.startswith(name + "(") and dtype.endswith(")"):
                precision, scale = (int(x) for x in dtype[len(name) + 1 : -1].split(","))
                return getattr(pa, name)(precision, scale)
    except (ValueError, TypeError) as err:
        raise ValueError(f"Invalid Value dtype {dtype!r}: {err}") from None
    raise ValueError(
        f"Unknown Value dtype {dtype!r}; use an Arrow type name such as 'int64', 'float32', "
        "'string', 'bool', 'binary' or 'timestamp[us]'"
    )


def _pa_to_dtype(pa_type: pa.DataType) -> str:
    """`Value` dtype string of an Arrow primitive type."""
    if pa.types.is_dictionary(pa_type):
        return _pa_to_dtype(pa_type.value_type)
    name = str(pa_type)
    return _PA_NAME_TO_DTYPE.get(name, name)


@dataclass
class Value:
    """A scalar of an Arrow primitive type, e.g. Value("int64"), Value("string")."""

    dtype: str
    id: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.dtype == "double":  # datasets' alias
            self.dtype = "float64"
        if self.dtype == "float":
            self.dtype = "float32"
        self.pa_type = _dtype_to_pa(self.dtype)

    def __call__(self) -> pa.DataType:
        return self.pa_type

    def __repr__(self) -> str:
        return f"Value({self.dtype!r})"

    def encode_example(self, value: Any) -> Any:
        # Python bools/ints/floats are coerced like datasets does; Arrow casts the rest.
        if value is None:
            return None
        if pa.types.is_boolean(self.pa_type):
            return bool(value)
        if pa.types.is_integer(self.pa_type) and isinstance(value, (bool, int, float)):
            return int(value)
        if pa.types.is_floating(self.pa_type) and isinstance(value, (bool, int, float)):
            return float(value)
        if pa.types.is_string(self.pa_type) or pa.types.is_large_string(self.pa_type):
            return value if isinstance(value, str) else str(value)
        return value


@dataclass
class ClassLabel:
    """An integer class label with names: ClassLabel(names=[...]) or ClassLabel(num_classes=n)."""

    num_classes: int | None = None
    names: list[str] | None = None
    names_file: str | None = field(default=None, repr=False)
    id: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.names_file is not None:
            if self.names is not None:
                raise ValueError("ClassLabel: give only one of names= and names_file=")
            with open(self.names_file, encoding="utf-8") as f:
                self.names = [line.strip() for line in f.read().splitlines() if line.strip()]
        if self.names is None:
            if self.num_classes is None:
                raise ValueError("ClassLabel needs names=, names_file= or num_classes=")
            self.names = [str(i) for i in range(self.num_classes)]
        else:
            self.names = [str(n) for n in self.names]
            if self.num_classes is not None and self.num_classes != len(self.names):
                raise ValueError(
                    f"ClassLabel: num_classes={self.num_classes} does not match the "
                    f"{len(self.names)} names"
                )
            self.num_classes = len(self.names)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"ClassLabel names must be unique, got {self.names}")
        self._str2int = {name: i for i, name in enumerate(self.names)}
        self.pa_type = pa.int64()

    def __call__(self) -> pa.DataType:
        return self.pa_type

    def __repr__(self) -> str:
        return f"ClassLabel(names={self.names!r})"

    def str2int(self, values: str | Iterable[str]) -> int | list[int]:
        """Class index of a name (or of each name in a list)."""
        if isinstance(values, str):
            return self._one_str2int(values)
        return [self._one_str2int(v) for v in values]

    def _one_str2int(self, value: str) -> int:
        index = self._str2int.get(value)
        if index is None:
            value = value.strip()
            index = self._str2int.get(value)
        if index is None:
            try:  # "3" for a ClassLabel(num_classes=...) is the class index
                index = int(value)
            except ValueError:
                raise ValueError(
                    f"Invalid string class label {value!r}; the names are {self.names}"
                ) from None
            self._check_int(index)
        return index

    def int2str(self, values: int | Iterable[int]) -> str | list[str]:
        """Name of a class index (or of each index in a list)."""
        if isinstance(values, (int,)) or hasattr(values, "__index__"):
            return self.names[self._check_int(int(values))]
        return [self.names[self._check_int(int(v))] for v in values]

    def _check_int(self, value: int) -> int:
        if not -1 <= value < self.num_classes:
            raise ValueError(
                f"Class label {value} is out of range for {self.num_classes} classes "
                f"(0..{self.num_classes - 1}, or -1 for no label)"
            )
        return value

    def encode_example(self, value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, str):
            return self._one_str2int(value)
        return self._check_int(int(value))


@dataclass
class List:
    """A list of `feature`; `length` > 0 makes it fixed-size (an Arrow fixed_size_list)."""

    feature: Any
    length: int = -1
    id: str | None = field(default=None, repr=False)

    def __call__(self) -> pa.DataType:
        item = get_nested_type(self.feature)
        return pa.list_(item, self.length) if self.length >= 0 else pa.list_(item)

    def __repr__(self) -> str:
        extra = f", length={self.length}" if self.length >= 0 else ""
        return f"List({self.feature!r}{extra})"


@dataclass
class LargeList:
    """A list of `feature` with 64-bit offsets (an Arrow large_list)."""

    feature: Any
    id: str | None = field(default=None, repr=False)

    def __call__(self) -> pa.DataType:
        return pa.large_list(get_nested_type(self.feature))

    def __repr__(self) -> str:
        return f"LargeList({self.feature!r})"


def Sequence(feature: Any, length: int = -1) -> Any:  # noqa: N802 - the datasets name
    """datasets' legacy name: a List, or for a dict feature a dict of Lists (as datasets 5)."""
    if isinstance(feature, dict):
        return {key: Sequence(value, length) for key, value in feature.items()}
    return List(feature, length)


@dataclass
class Array2D:
    """A 2-D array of `dtype` with the given shape, stored as a list of lists."""

    shape: tuple
    dtype: str
    id: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.shape = tuple(self.shape)
        if len(self.shape) != 2:
            raise ValueError(f"Array2D needs a 2-D shape, got {self.shape}")
        self.pa_type = pa.list_(pa.list_(_dtype_to_pa(self.dtype)))

    def __call__(self) -> pa.DataType:
        return self.pa_type

    def __repr__(self) -> str:
        return f"Array2D(shape={self.shape}, dtype={self.dtype!r})"

    def field_metadata(self) -> dict[bytes, bytes]:
        """Arrow field metadata marking the column as datasets' Array2D extension type.

        With it, `datasets` reads our files with its Array2D type (it requires it); without
        `datasets` imported, Arrow just reads the nested lists (the extension's storage).
        """
        return {
            b"ARROW:extension:name": b"datasets.features.features.Array2DExtensionType",
            b"ARROW:extension:metadata": json.dumps([list(self.shape), self.dtype]).encode(),
        }


FeatureType = Value | ClassLabel | List | LargeList | Array2D | dict | list

_FEATURE_CLASSES = {cls.__name__: cls for cls in (Value, ClassLabel, List, LargeList, Array2D)}


def get_nested_type(feature: FeatureType) -> pa.DataType:
    """Arrow type of a (possibly nested) feature."""
    if isinstance(feature, dict):
        return pa.struct({key: get_nested_type(value) for key, value in feature.items()})
    if isinstance(feature, (list, tuple)):  # [feature] is datasets' shorthand for List(feature)
        if len(feature) != 1:
            raise ValueError(f"A list feature holds exactly one item type, got {feature!r}")
        return pa.list_(get_nested_type(feature[0]))
    if isinstance(feature, (Value, ClassLabel, List, LargeList, Array2D)):
        return feature()
    raise TypeError(f"Not a feature type: {feature!r} ({type(feature).__name__})")


def generate_from_arrow_type(pa_type: pa.DataType) -> FeatureType:
    """The feature for an Arrow type (used when a file carries no feature metadata)."""
    if isinstance(pa_type, pa.StructType):
        return {f.name: generate_from_arrow_type(f.type) for f in pa_type}
    if isinstance(pa_type, pa.FixedSizeListType):
        return List(generate_from_arrow_type(pa_type.value_type), length=pa_type.list_size)
    if isinstance(pa_type, pa.ListType):
        return List(generate_from_arrow_type(pa_type.value_type))
    if isinstance(pa_type, pa.LargeListType):
        return LargeList(generate_from_arrow_type(pa_type.value_type))
    if isinstance(pa_type, pa.ExtensionType):
        return generate_from_arrow_type(pa_type.storage_type)
    if isinstance(pa_type, (pa.MapType, pa.UnionType)):
        raise ValueError(f"Arrow type {pa_type} has no datasets feature equivalent")
    return Value(_pa_to_dtype(pa_type))


def _feature_to_dict(feature: FeatureType) -> Any:
    if isinstance(feature, dict):
        return {key: _feature_to_dict(value) for key, value in feature.items()}
    if isinstance(feature, (list, tuple)):
        return _feature_to_dict(List(feature[0]))
    if isinstance(feature, Value):
        return {"dtype": feature.dtype, "_type": "Value"}
    if isinstance(feature, ClassLabel):
        return {"names": list(feature.names), "_type": "ClassLabel"}
    if isinstance(feature, List):
        out = {"feature": _feature_to_dict(feature.feature)}
        if feature.length >= 0:
            out["length"] = feature.length
        out["_type"] = "List"
        return out
    if isinstance(feature, LargeList):
        return {"feature": _feature_to_dict(feature.feature), "_type": "LargeList"}
    if isinstance(feature, Array2D):
        return {"shape": tuple(feature.shape), "dtype": feature.dtype, "_type": "Array2D"}
    raise TypeError(f"Not a feature type: {feature!r}")


def _feature_from_dict(obj: Any) -> FeatureType:
    if isinstance(obj, list):  # [feature] shorthand
        return List(_feature_from_dict(obj[0]))
    if not isinstance(obj, dict):
        raise ValueError(f"Invalid feature description: {obj!r}")
    kind = obj.get("_type")
    if kind is None:  # a struct
        return {key: _feature_from_dict(value) for key, value in obj.items()}
    if kind == "Value":
        return Value(obj["dtype"])
    if kind == "ClassLabel":
        if obj.get("names") is not None:
            return ClassLabel(names=obj["names"])
        return ClassLabel(num_classes=obj["num_classes"])
    if kind in ("List", "Sequence"):
        inner = _feature_from_dict(obj["feature"])
        length = obj.get("length", -1)
        return Sequence(inner, length) if kind == "Sequence" else List(inner, length)
    if kind == "LargeList":
        return LargeList(_feature_from_dict(obj["feature"]))
    if kind == "Array2D":
        return Array2D(tuple(obj["shape"]), obj["dtype"])
    raise ValueError(
        f"Unsupported feature type {kind!r}; cove.datasets knows {sorted(_FEATURE_CLASSES)}"
    )


def encode_nested_example(feature: FeatureType, obj: Any) -> Any:
    """Encode one value for storage (ClassLabel names -> indices, numbers coerced)."""
    if obj is None:
        return None
    if isinstance(feature, dict):
        if not isinstance(obj, Mapping):
            raise TypeError(f"Expected a dict for a struct feature, got {type(obj).__name__}")
        return {key: encode_nested_example(sub, obj.get(key)) for key, sub in feature.items()}
    if isinstance(feature, (list, tuple)):
        feature = List(feature[0])
    if isinstance(feature, (List, LargeList)):
        inner = feature.feature
        if isinstance(inner, dict) and isinstance(obj, Mapping):  # dict of lists -> list of dicts
            keys = list(obj)
            columns = [obj[k] for k in keys]
            obj = [dict(zip(keys, values, strict=True)) for values in zip(*columns, strict=True)]
        if _needs_encoding(inner):
            return [encode_nested_example(inner, item) for item in obj]
        return obj
    if isinstance(feature, (Value, ClassLabel)):
        return feature.encode_example(obj)
    return obj


def _needs_encoding(feature: FeatureType) -> bool:
    # Lists of plain numbers/strings are passed to Arrow untouched, which is much faster.
    if isinstance(feature, ClassLabel) or isinstance(feature, dict):
        return True
    if isinstance(feature, (List, LargeList)):
        return _needs_encoding(feature.feature)
    if isinstance(feature, (list, tuple)):
        return _needs_encoding(feature[0])
    return False


def contains_class_label(feature: FeatureType) -> bool:
    """Whether a (possibly nested) feature holds a ClassLabel anywhere."""
    if isinstance(feature, ClassLabel):
        return True
    if isinstance(feature, dict):
        return any(contains_class_label(f) for f in feature.values())
    if isinstance(feature, (List, LargeList)):
        return contains_class_label(feature.feature)
    if isinstance(feature, (list, tuple)):
        return contains_class_label(feature[0])
    return False


def cast_array_to_feature(array: pa.Array | pa.ChunkedArray, feature: FeatureType, column: str,
                          source: str | None = None) -> pa.Array | pa.ChunkedArray:
    """`array` as the Arrow type of `feature`, with ClassLabels encoded as datasets does.

    A ClassLabel takes its names (exact, then with surrounding spaces stripped, then as
    integer ids written as text), or ids checked against its range; this also applies inside
    lists and structs. All of it is vectorised Arrow compute. `column` (and the file `source`)
    name the data in errors, which are ValueErrors naming the bad value.
    """
    if isinstance(array, pa.ChunkedArray):
        target = get_nested_type(feature)
        if array.type == target and not contains_class_label(feature):
            return array
        chunks = [_cast_array(chunk, feature, column, source) for chunk in array.chunks]
        return pa.chunked_array(chunks, type=target)
    return _cast_array(array, feature, column, source)


def _where(column: str, source: str | None) -> str:
    return f"column {column!r}" + (f" of {source}" if source else "")


def _cast_array(array: pa.Array, feature: FeatureType, column: str,
                source: str | None) -> pa.Array:
    target = get_nested_type(feature)
    if isinstance(feature, (list, tuple)):
        feature = List(feature[0])
    if isinstance(feature, ClassLabel):
        return _class_label_ids(array, feature, column, source)
    if contains_class_label(feature):  # rebuild the nesting around the encoded labels
        if isinstance(feature, dict) and pa.types.is_struct(array.type) \
                and {f.name for f in array.type} == set(feature):
            children = dict(zip([f.name for f in array.type], array.flatten(), strict=True))
            arrays = [_cast_array(children[key], sub, f"{column}.{key}", source)
                      for key, sub in feature.items()]
            mask = array.is_null() if array.null_count else None
            return pa.StructArray.from_arrays(arrays, fields=list(target), mask=mask)
        if isinstance(feature, (List, LargeList)) and (
                pa.types.is_list(array.type) or pa.types.is_large_list(array.type)
                or pa.types.is_fixed_size_list(array.type)):
            return _cast_list(array, feature, target, column, source)
    if array.type == target:
        return array
    try:
        return array.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
        raise ValueError(f"Couldn't cast {_where(column, source)} from {array.type} to "
                         f"{feature!r}: {err}") from None


def _cast_list(array: pa.Array, feature: List | LargeList, target: pa.DataType, column: str,
               source: str | None) -> pa.Array:
    # the items are cast flat, then put back into lists of the same lengths
    items = _cast_array(pc.list_flatten(array), feature.feature, f"{column}[]", source)
    large = isinstance(feature, LargeList)
    offset_type = pa.int64() if large else pa.int32()
    lengths = pc.fill_null(pc.list_value_length(array), 0).cast(offset_type)
    offsets = pa.concat_arrays([pa.array([0], offset_type),
                                pc.cumulative_sum(lengths).cast(offset_type)])
    mask = array.is_null() if array.null_count else None
    lists = (pa.LargeListArray if large else pa.ListArray).from_arrays(offsets, items, mask=mask)
    if lists.type == target:
        return lists
    try:  # List(..., length=n): a fixed-size list
        return lists.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise ValueError(f"Couldn't cast {_where(column, source)} from {array.type} to "
                         f"{feature!r}: {err}") from None


def _class_label_ids(array: pa.Array, label: ClassLabel, column: str,
                     source: str | None) -> pa.Array:
    """Class ids of names (or of ids as text) or of integers, checked against the names."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type) \
            or pa.types.is_string_view(array.type):
        return _class_ids_of_names(array, label, column, source)
    try:
        ids = array.cast(pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
        raise ValueError(f"Couldn't cast {_where(column, source)} from {array.type} to "
                         f"{label!r}: {err}") from None
    bounds = pc.min_max(ids).as_py()
    for bad in (bounds["min"], bounds["max"]):
        if bad is not None and not -1 <= bad < label.num_classes:
            raise ValueError(
                f"Class label {bad} in {_where(column, source)} is out of range for "
                f"{label!r}: ids are 0..{label.num_classes - 1}, or -1 for no label"
            )
    return ids


def _class_ids_of_names(array: pa.Array, label: ClassLabel, column: str,
                        source: str | None) -> pa.Array:
    if pa.types.is_string_view(array.type):  # index_in has no string_view kernel
        array = array.cast(pa.large_string())
    names = pa.array(label.names, type=array.type)
    ids = pc.index_in(array, value_set=names)
    unknown = pc.and_(pc.is_null(ids), pc.is_valid(array))
    if pc.any(unknown).as_py():  # as datasets: then the name without surrounding spaces
        stripped = pc.utf8_trim_whitespace(array)
        ids = pc.coalesce(ids, pc.index_in(stripped, value_set=names))
        unknown = pc.and_(pc.is_null(ids), pc.is_valid(array))
        if pc.any(unknown).as_py():  # then an id written as text, e.g. "1" in a CSV
            digits = pc.match_substring_regex(stripped, r"^[+-]?[0-9]{1,18}$")
            as_int = pc.if_else(digits, stripped, pa.scalar(None, array.type)).cast(pa.int64())
            in_range = pc.and_(pc.greater_equal(as_int, -1),
                               pc.less(as_int, label.num_classes))
            ids = pc.coalesce(ids.cast(pa.int64()),
                              pc.if_else(in_range, as_int, pa.scalar(None, pa.int64())))
            unknown = pc.and_(pc.is_null(ids), pc.is_valid(array))
            if pc.any(unknown).as_py():
                bad = pc.unique(pc.filter(array, unknown)).to_pylist()
                others = f" (and {len(bad) - 1} other unknown labels)" if len(bad) > 1 else ""
                shown = label.names if len(label.names) <= 20 else [*label.names[:20], "..."]
                raise ValueError(
                    f"Invalid string class label {bad[0]!r} in {_where(column, source)}"
                    f"{others}: the ClassLabel names are {shown}"
                )
    return ids.cast(pa.int64())


def cast_table_to_features(table: pa.Table, features: Features,
                           source: str | None = None) -> pa.Table:
    """`table`'s columns in the order and types of `features` (see cast_array_to_feature);
    columns whose type is already right are not copied."""
    missing = [name for name in features if name not in table.column_names]
    if missing:
        raise ValueError(f"Columns {missing} of the features are missing from "
                         f"{source or 'the data'} (its columns are {table.column_names})")
    arrays = [cast_array_to_feature(table.column(name), features[name], name, source)
              for name in features]
    return pa.Table.from_arrays(arrays, schema=features.arrow_schema)


class Features(dict):
    """The columns of a dataset: a dict of column name -> feature type."""

    @property
    def type(self) -> pa.StructType:
        return get_nested_type(dict(self))

    @property
    def arrow_schema(self) -> pa.Schema:
        """Arrow schema with the features in the "huggingface" metadata, as datasets writes it."""
        metadata = {"huggingface": json.dumps({"info": {"features": self.to_dict()}})}
        fields = [
            pa.field(name, get_nested_type(feature),
                     metadata=feature.field_metadata() if isinstance(feature, Array2D) else None)
            for name, feature in self.items()
        ]
        return pa.schema(fields, metadata=metadata)

    @classmethod
    def from_arrow_schema(cls, schema: pa.Schema) -> Features:
        """Features of a schema: its "huggingface" metadata when present, else from its types."""
        metadata = schema.metadata or {}
        raw = metadata.get(b"huggingface")
        if raw is not None:
            try:
                stored = json.loads(raw.decode("utf-8")).get("info", {}).get("features")
            except (ValueError, AttributeError):
                stored = None
            if stored is not None and set(stored) == set(schema.names):
                features = cls.from_dict(stored)
                return cls({name: features[name] for name in schema.names})
        return cls({f.name: generate_from_arrow_type(f.type) for f in schema})

    def to_dict(self) -> dict:
        """The JSON-able form used in dataset_info.json (`datasets`' format)."""
        return {key: _feature_to_dict(value) for key, value in self.items()}

    @classmethod
    def from_dict(cls, dic: Mapping) -> Features:
        """Features from `to_dict()` output (also reads the old "Sequence" form)."""
        return cls({key: _feature_from_dict(value) for key, value in dic.items()})

    def encode_example(self, example: Mapping) -> dict:
        """Encode one row (e.g. ClassLabel names -> indices)."""
        return {key: encode_nested_example(feature, example.get(key)) for key, feature in self.items()}

    def encode_column(self, column: Iterable, name: str) -> list:
        feature = self[name]
        return [encode_nested_example(feature, value) for value in column]

    def encode_batch(self, batch: Mapping) -> dict:
        """Encode a batch (a dict of column name -> list of values)."""
        out = {}
        for key, column in batch.items():
            if key not in self:
                raise KeyError(f"Column {key!r} is not in the features {list(self)}")
            if _needs_encoding(self[key]) or isinstance(self[key], (Value, ClassLabel)):
                out[key] = self.encode_column(column, key)
            else:
                out[key] = column
        return out

    def copy(self) -> Features:
        return Features.from_dict(self.to_dict())

    def flatten(self, max_depth: int = 16) -> Features:
        """Struct columns become one column per field, named "parent.child" (as datasets)."""
        current = Features(self)
        for _ in range(max_depth):
            flat: dict = {}
            changed = False
            for key, value in current.items():
                if isinstance(value, dict):
                    changed = True
                    for sub_key, sub_value in value.items():
                        flat[f"{key}.{sub_key}"] = sub_value
                else:
                    flat[key] = value
            # datasets puts the flattened struct fields after the other columns
            plain = {k: v for k, v in flat.items() if "." not in k or k in current}
            nested = {k: v for k, v in flat.items() if k not in plain}
            current = Features({**plain, **nested})
            if not changed:
                break
        return current

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{key!r}: {value!r}" for key, value in self.items()) + "}"


def features_of_table(table: pa.Table) -> Features:
    """Features of an Arrow table (from its schema metadata or its types)."""
    return Features.from_arrow_schema(table.schema)
