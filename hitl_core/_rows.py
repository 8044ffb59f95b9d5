"""Records as plain rows and back: what a store adapter writes (`to_row`) and how it
rebuilds a record from what it read, checking every field (`from_row`)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
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

__all__ = ["RECORDS", "field_names", "from_row", "to_row"]

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
