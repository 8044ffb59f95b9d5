"""Records as plain rows and back: what a store adapter writes (`to_row`) and how it
rebuilds a record from what it read, checking every field (`from_row`)."""

from __future__ import annotations

import enum
import json as _json
import json.encoder
import json.scanner
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

import attrs

from ._errors import StoreError
from ._records import (
    Event,
    IdempotencyKey,
    PermissionPolicy,
    PermissionRequest,
    RequestStatus,
    Run,
    RunStatus,
    Task,
    WebhookDelivery,
    WebhookEndpoint,
)

__all__ = ["RECORDS", "field_names", "from_row", "row_reader", "row_writer", "to_row"]

RECORDS: tuple[type[Any], ...] = (
    Run,
    PermissionRequest,
    PermissionPolicy,
    Task,
    Event,
    WebhookEndpoint,
    WebhookDelivery,
    IdempotencyKey,
)
"""Every record class a store keeps."""

R = TypeVar("R")

# What a field holds, read off its annotation: the checks and conversions of `from_row`.
_ENUMS: dict[str, type[enum.Enum]] = {"RunStatus": RunStatus, "RequestStatus": RequestStatus}
_KINDS = {
    "str": "str",
    "str | None": "str?",
    "bool": "bool",
    "bool | None": "bool?",
    "int": "int",
    "int | None": "int?",
    "float": "float",
    "float | None": "float?",
    "dict[str, Any]": "dict",
    "dict[str, Any] | None": "dict?",
    "Any": "json",
    "frozenset[str]": "names",
    "tuple[str, ...]": "names",
    "RunStatus": "enum",
    "RequestStatus": "enum",
}


def _kind(cls: type, field: attrs.Attribute[Any]) -> str:
    kind = _KINDS.get(str(field.type))
    if kind is None:  # pragma: no cover - a new field type needs a line above
        raise TypeError(f"{cls.__name__}.{field.name}: no row form for {field.type!r}")
    return kind


def field_names(cls: type[Any]) -> tuple[str, ...]:
    """The names of a record class's stored fields, in order: the keys of its rows."""
    return tuple(field.alias or field.name for field in attrs.fields(cls))


# -- to_row -------------------------------------------------------------------------------

_WRITERS: dict[type, Callable[[Any], dict[str, Any]]] = {}


def _compile_writer(cls: type) -> Callable[[Any], dict[str, Any]]:
    namespace: dict[str, Any] = {"_sorted": sorted, "_list": list}
    items = []
    for field in attrs.fields(cls):
        alias, kind = field.alias or field.name, _kind(cls, field)
        value = f"record.{field.name}"
        if kind == "enum":
            value += ".value"
        elif kind == "names":
            value = f"_sorted({value})" if "frozenset" in str(field.type) else f"_list({value})"
        items.append(f"{alias!r}: {value}")
    source = "def to_row(record):\n    return {" + ", ".join(items) + "}"
    exec(source, namespace)
    writer: Callable[[Any], dict[str, Any]] = namespace["to_row"]
    return writer


def to_row(record: Any) -> dict[str, Any]:
    """The record as a row: field name -> a plain value (enums as their strings, sets of
    names as sorted lists, JSON data as dicts and lists). The JSON values are the
    record's own, not copies: serialise them, never change them."""
    writer = _WRITERS.get(type(record))
    if writer is None:
        if type(record) not in RECORDS:
            raise TypeError(f"{type(record).__name__} is not a hitl-core record")
        writer = _WRITERS[type(record)] = _compile_writer(type(record))
    return writer(record)


# -- from_row -----------------------------------------------------------------------------

_READERS: dict[type, Callable[[Mapping[str, Any]], Any]] = {}


def _bad(cls: type, name: str, value: object, wanted: str) -> StoreError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return StoreError("store_corrupt", f"a stored {cls.__name__} has {name}={shown}, not {wanted}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_str(cls: type, name: str, value: Any, optional: bool) -> Any:
    if isinstance(value, str) or (optional and value is None):
        return value
    raise _bad(cls, name, value, "a string" + (" or None" if optional else ""))


def _check_bool(cls: type, name: str, value: Any, optional: bool) -> Any:
    if isinstance(value, bool) or (optional and value is None):
        return value
    if _is_int(value) and value in (0, 1):  # SQL stores keep booleans as 0 and 1
        return bool(value)
    raise _bad(cls, name, value, "a boolean")


def _check_int(cls: type, name: str, value: Any, optional: bool) -> Any:
    if _is_int(value) or (optional and value is None):
        return value
    raise _bad(cls, name, value, "an integer")


def _check_float(cls: type, name: str, value: Any, optional: bool) -> Any:
    if isinstance(value, float) or (optional and value is None):
        return value
    if _is_int(value):
        return float(value)
    raise _bad(cls, name, value, "a number")


def _check_dict(cls: type, name: str, value: Any, optional: bool) -> Any:
    if isinstance(value, dict) or (optional and value is None):
        return value
    raise _bad(cls, name, value, "a JSON object")


def _check_names(cls: type, name: str, value: Any, as_set: bool) -> Any:
    if isinstance(value, (list, tuple, set, frozenset)) and all(
        isinstance(item, str) for item in value
    ):
        return frozenset(value) if as_set else tuple(value)
    raise _bad(cls, name, value, "a list of strings")


def _check_enum(cls: type, name: str, value: Any, kind: type[enum.Enum]) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise _bad(cls, name, value, f"a {kind.__name__}") from None


_CHECKS = {
    "str": "_check_str(cls, {n!r}, {v}, False)",
    "str?": "_check_str(cls, {n!r}, {v}, True)",
    "bool": "_check_bool(cls, {n!r}, {v}, False)",
    "bool?": "_check_bool(cls, {n!r}, {v}, True)",
    "int": "_check_int(cls, {n!r}, {v}, False)",
    "int?": "_check_int(cls, {n!r}, {v}, True)",
    "float": "_check_float(cls, {n!r}, {v}, False)",
    "float?": "_check_float(cls, {n!r}, {v}, True)",
    "dict": "_check_dict(cls, {n!r}, {v}, False)",
    "dict?": "_check_dict(cls, {n!r}, {v}, True)",
    "json": "{v}",
}


def _compile_reader(cls: type) -> Callable[[Mapping[str, Any]], Any]:
    """A straight-line `from_row` for one class: each field checked and converted, the
    record built without its converters (the row's JSON values become the record's)."""
    fields = attrs.fields(cls)
    namespace: dict[str, Any] = {
        "cls": cls,
        "_new": object.__new__,
        "_set": object.__setattr__,
        "_known": frozenset(field.alias or field.name for field in fields),
        "_refuse": _refuse,
        "_check_str": _check_str,
        "_check_bool": _check_bool,
        "_check_int": _check_int,
        "_check_float": _check_float,
        "_check_dict": _check_dict,
        "_check_names": _check_names,
        "_check_enum": _check_enum,
    }
    lines = [
        "def from_row(row):",
        "    if not _known.issuperset(row):",
        "        _refuse(cls, row, _known)",
        "    new = _new(cls)",
    ]
    for field in fields:
        alias, kind = field.alias or field.name, _kind(cls, field)
        if field.default is attrs.NOTHING:
            lines += [
                f"    if {alias!r} not in row:",
                f"        raise _missing(cls, {alias!r})",
            ]
            namespace["_missing"] = _missing
            raw = f"row[{alias!r}]"
        else:
            default = field.default
            if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                default = default.factory()
            namespace[f"default_{field.name}"] = default
            raw = f"row.get({alias!r}, default_{field.name})"
        if kind == "enum":
            namespace[f"enum_{field.name}"] = _ENUMS[str(field.type)]
            value = f"_check_enum(cls, {alias!r}, {raw}, enum_{field.name})"
        elif kind == "names":
            value = f"_check_names(cls, {alias!r}, {raw}, {'frozenset' in str(field.type)})"
        else:
            value = _CHECKS[kind].format(n=alias, v=raw)
        lines.append(f"    _set(new, {field.name!r}, {value})")
    lines.append("    return new")
    exec("\n".join(lines), namespace)
    reader: Callable[[Mapping[str, Any]], Any] = namespace["from_row"]
    return reader


def _refuse(cls: type, row: Mapping[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(row) - known)
    raise StoreError("store_corrupt", f"a stored {cls.__name__} has unknown fields {unknown}")


def _missing(cls: type, name: str) -> StoreError:
    return StoreError("store_corrupt", f"a stored {cls.__name__} has no {name}")


def from_row(cls: type[R], row: Mapping[str, Any]) -> R:
    """Rebuild a record of `cls` from a row (`to_row`'s form; lists for sets, strings for
    enums, 0/1 for booleans and ints for floats are accepted). Every field is checked: an
    unknown, missing or ill-typed one is StoreError('store_corrupt'). Fields added to a
    record after the row was written take their defaults. The row's JSON values become
    the record's own: do not change them afterwards."""
    reader = _READERS.get(cls)
    if reader is None:
        if cls not in RECORDS:
            raise TypeError(f"{getattr(cls, '__name__', cls)!r} is not a hitl-core record")
        reader = _READERS[cls] = _compile_reader(cls)
    record: R = reader(row)
    return record


# -- row_writer / row_reader: the same forms as tuples, compiled ------------------------

def _unencodable(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# The C encoder and scanner of the standard library, made once: `json.dumps` and
# `json.loads` build or look them up on every call, which costs more than a small value's
# whole encoding. No check for cycles: record values are checked copies, never cyclic.
_encode = _json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None, _unencodable, _json.encoder.encode_basestring, None, ":", ",", False, False, False
)
_scan = _json.scanner.c_make_scanner(_json.JSONDecoder())  # type: ignore[attr-defined]


def _dumps(value: Any) -> str:
    """Compact JSON text, UTF-8 kept as it is, no NaN or infinity (ValueError)."""
    return "".join(_encode(value, 0))


def _loads(text: str) -> Any:
    """The value of JSON text (json.JSONDecodeError when it is not)."""
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        return _json.loads(text)  # raises the decoder's own error
    if end != len(text):
        return _json.loads(text)  # trailing text: accepted only as whitespace
    return value
_ROW_WRITERS: dict[tuple[Any, ...], Callable[[Any], tuple[Any, ...]]] = {}
_ROW_READERS: dict[tuple[Any, ...], Callable[[Sequence[Any]], Any]] = {}


def _fields(cls: type, names: Sequence[str]) -> dict[str, attrs.Attribute[Any]]:
    if cls not in RECORDS:
        raise TypeError(f"{getattr(cls, '__name__', cls)!r} is not a hitl-core record")
    fields = {field.alias or field.name: field for field in attrs.fields(cls)}
    unknown = [name for name in names if name not in fields]
    if unknown:
        raise TypeError(f"{cls.__name__} has no fields {unknown}")
    return fields


def row_writer(
    cls: type[Any], names: Sequence[str], json: Collection[str] = (), *, int_bools: bool = False
) -> Callable[[Any], tuple[Any, ...]]:
    """A function that turns a record of `cls` into a tuple of the fields `names`, in that
    order, in their row form (as `to_row` gives them), with the fields in `json` as
    compact JSON text (`to_json`; None stays None), and with `int_bools` booleans as 0
    and 1 (what SQLite keeps; `sqlite3` binds an int much faster than a bool). Compiled
    once per arguments: the fast way to make a statement's parameters. Values that are
    not JSON text are the record's own: never change them."""
    key = (cls, tuple(names), frozenset(json), int_bools)
    writer = _ROW_WRITERS.get(key)
    if writer is None:
        fields = _fields(cls, names)
        namespace: dict[str, Any] = {"_sorted": sorted, "_list": list, "_dumps": _dumps}
        items = []
        for name in names:
            field = fields[name]
            kind = _kind(cls, field)
            value = f"record.{field.name}"
            if kind == "enum":
                value += ".value"
            elif kind == "names":
                value = f"_sorted({value})" if "frozenset" in str(field.type) else f"_list({value})"
            elif int_bools and kind == "bool":
                value = f"(1 if {value} else 0)"
            elif int_bools and kind == "bool?":
                value = f"(None if {value} is None else 1 if {value} else 0)"
            if name in json:
                if kind == "names":  # usually empty
                    value = f"(_dumps({value}) if record.{field.name} else '[]')"
                elif field.default is attrs.NOTHING and kind == "dict":
                    value = f"_dumps({value})"
                else:
                    value = f"(None if {value} is None else _dumps({value}))"
            items.append(value)
        source = f"def {cls.__name__}_row(record):\n    return ({', '.join(items)},)"
        exec(source, namespace)
        writer = _ROW_WRITERS[key] = namespace[f"{cls.__name__}_row"]
    return writer


def _check_bool_fast(cls: type, name: str, value: Any) -> bool:
    if value is True or value is False:
        return value
    if type(value) is int and (value == 0 or value == 1):  # SQL stores keep 0 and 1
        return value == 1
    raise _bad(cls, name, value, "a boolean")


def _width(cls: type, row: Sequence[Any], width: int) -> StoreError:
    return StoreError(
        "store_corrupt", f"a stored {cls.__name__} row has {len(row)} values, not {width}"
    )


def row_reader(
    cls: type[R], names: Sequence[str], json: Collection[str] = (), *, offset: int = 0
) -> Callable[[Sequence[Any]], R]:
    """The inverse of `row_writer`: a function that rebuilds a record of `cls` from a
    sequence of the fields `names` (the `json` ones as JSON text), checking every value
    as `from_row` does (StoreError('store_corrupt') for a wrong one). Fields not named
    take their defaults; every field without a default must be named. With an `offset`,
    the fields start at that index (a store's own columns, such as a sequence number,
    may come first). The decoded JSON values become the record's own."""
    key = (cls, tuple(names), frozenset(json), offset)
    reader = _ROW_READERS.get(key)
    if reader is None:
        fields = _fields(cls, names)
        missing = [
            name for name, field in fields.items()
            if field.default is attrs.NOTHING and name not in names
        ]  # fmt: skip
        if missing:
            raise TypeError(f"a row of {cls.__name__} needs the fields {missing}")
        namespace: dict[str, Any] = {
            "cls": cls,
            "_new": object.__new__,
            "_loads": _loads,
            "_bad": _bad,
            "_width": _width,
            "_is_int": _is_int,
            "_bool": _check_bool_fast,
            "_names": _check_names,
            "_str": str,
            "_float": float,
            "_dict": dict,
        }
        skipped = "".join("_, " for _ in range(offset))
        width = offset + len(names)
        lines = [
            "def from_row(row):",
            f"    if len(row) != {width}:",
            f"        raise _width(cls, row, {width})",
            f"    ({skipped}{''.join(f'v{index}, ' for index in range(len(names)))}) = row",
            "    new = _new(cls)",
        ]
        position = {name: index for index, name in enumerate(names)}
        for name, field in fields.items():
            namespace[f"set_{field.name}"] = getattr(cls, field.name).__set__
            if name not in position:
                default: Any = field.default
                if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                    namespace[f"factory_{field.name}"] = default.factory
                    lines.append(f"    set_{field.name}(new, factory_{field.name}())")
                else:
                    namespace[f"default_{field.name}"] = default
                    lines.append(f"    set_{field.name}(new, default_{field.name})")
                continue
            v, kind = f"v{position[name]}", _kind(cls, field)
            bad = f"        raise _bad(cls, {name!r}, {v}, {{}})"
            if name in json:
                if kind == "names":  # usually empty
                    lines.append(f"    {v} = () if {v} == '[]' else _loads({v})")
                else:
                    lines.append(f"    if {v} is not None: {v} = _loads({v})")
            optional = kind.endswith("?")
            guard = f"{v} is not None and " if optional else ""
            if kind in ("str", "str?"):
                lines += [f"    if {guard}not isinstance({v}, _str):", bad.format("'a string'")]
            elif kind in ("int", "int?"):
                lines += [f"    if {guard}not _is_int({v}):", bad.format("'an integer'")]
            elif kind in ("float", "float?"):
                lines += [
                    f"    if {guard}type({v}) is not _float:",
                    f"        if not _is_int({v}):",
                    "    " + bad.format("'a number'"),
                    f"        {v} = _float({v})",
                ]
            elif kind in ("bool", "bool?"):
                lines.append(f"    if {guard}True: {v} = _bool(cls, {name!r}, {v})")
            elif kind in ("dict", "dict?"):
                lines += [
                    f"    if {guard}not isinstance({v}, _dict):",
                    bad.format("'a JSON object'"),
                ]
            elif kind == "names":
                as_set = "frozenset" in str(field.type)
                lines.append(f"    {v} = _names(cls, {name!r}, {v}, {as_set})")
            elif kind == "enum":
                members = _ENUMS[str(field.type)]
                namespace[f"members_{field.name}"] = {m.value: m for m in members}
                raw, wanted = f"row[{offset + position[name]}]", f"a {members.__name__}"
                lines += [
                    f"    {v} = members_{field.name}.get({v}) if isinstance({v}, _str) else None",
                    f"    if {v} is None:",
                    f"        raise _bad(cls, {name!r}, {raw}, {wanted!r})",
                ]
            lines.append(f"    set_{field.name}(new, {v})")
        lines.append("    return new")
        exec("\n".join(lines), namespace)
        reader = _ROW_READERS[key] = namespace["from_row"]
    made: Callable[[Sequence[Any]], R] = reader
    return made
