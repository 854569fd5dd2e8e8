"""Typed readers for webhook payloads and headers, shared by every tracker's parser.

Every failure is a ``MalformedPayload`` naming the field (``where``), so a
malformed delivery gets a 400 with a useful message instead of a KeyError
or TypeError escaping as a 500.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec
import orjson

from service.errors import MalformedPayload

Payload = dict[str, Any]
T = TypeVar("T")

# msgspec's validation messages, e.g. "Expected `int`, got `str` - at `$.issue.number`".
_AT = r"(?: - at `\$(?P<at>.*)`)?"
_WRONG_TYPE = re.compile(r"Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`" + _AT)
_MISSING = re.compile(r"Object missing required field `(?P<name>[^`]+)`" + _AT)
_JSON_NAMES = {"str": "string", "int": "number", "float": "number", "bool": "boolean",
               "array": "array", "object": "object", "null": "null"}
_EXPECTED = {"object": "an object", "object | null": "an object", "array": "a list",
             "array | null": "a list or null", "str | null": "str or null",
             "int | null": "int or null"}


def decode_struct(data: bytes | str, kind: type[T]) -> T:
    """Decode a JSON body into the msgspec struct ``kind``; ``MalformedPayload`` naming the
    field otherwise (``issue.number is a JSON string, expected int``)."""
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as exc:
        raise MalformedPayload(_describe_invalid(str(exc), data)) from None
    except (msgspec.DecodeError, RecursionError):
        raise MalformedPayload("body is not valid JSON") from None


def _describe_invalid(message: str, data: bytes | str) -> str:
    """msgspec's validation message in the words of this module's other readers."""
    if (missing := _MISSING.fullmatch(message)) is not None:
        return f"{_field_path(missing['at'], missing['name'])} is missing"
    wrong = _WRONG_TYPE.fullmatch(message)
    if wrong is None:
        return f"body does not have the expected shape: {message}"
    where, got = _field_path(wrong["at"]), wrong["got"]
    if not where:  # the body itself: not an object, or not JSON at all
        try:
            msgspec.json.decode(data)
        except (msgspec.DecodeError, RecursionError):
            return "body is not valid JSON"
        return f"body is a JSON {_JSON_NAMES.get(got, got)}, not an object"
    if got == "null":
        return f"{where} is missing"
    want = _EXPECTED.get(wrong["want"], wrong["want"])
    if got == "bool":
        return f"{where} is a boolean, expected {want}"
    return f"{where} is a JSON {_JSON_NAMES.get(got, got)}, expected {want}"


def _field_path(at: str | None, name: str = "") -> str:
    """``.issue.labels[0]`` (+ ``name``) → ``issue.labels[0].name``; ``""`` for the body."""
    path = (at or "").lstrip(".")
    return ".".join(part for part in (path, name) if part)


def decode_object(data: bytes | str) -> Payload:
    """Decode a JSON body that must be an object; ``MalformedPayload`` for anything else.

    It refuses NaN/Infinity and nesting deeper than 1024, which no real delivery has.
    """
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedPayload("body is not valid JSON") from exc
    if not isinstance(decoded, dict):
        raise MalformedPayload(f"body is a JSON {json_type(decoded)}, not an object")
    return decoded


def field(obj: Payload, key: str, kind: type[T], where: str) -> T:
    """``obj[key]``, which must be present and of ``kind`` (a bool is not an int)."""
    if key not in obj or obj[key] is None:
        raise MalformedPayload(f"{where} is missing")
    return typed(obj[key], kind, where)


def optional(obj: Payload, key: str, kind: type[T], where: str) -> T | None:
    """``obj[key]`` if present and not null, else ``None``; a wrong type is malformed."""
    value = obj.get(key)
    return None if value is None else typed(value, kind, where)


def typed(value: object, kind: type[T], where: str) -> T:
    """``value`` if it is a ``kind`` (JSON booleans are not numbers), else malformed."""
    if isinstance(value, bool) and kind is not bool:
        raise MalformedPayload(f"{where} is a boolean, expected {kind.__name__}")
    if not isinstance(value, kind):
        raise MalformedPayload(f"{where} is a JSON {json_type(value)}, expected {kind.__name__}")
    return value


def required_object(obj: Payload, key: str, where: str) -> Payload:
    """``obj[key]``, which must be a JSON object."""
    if key not in obj or obj[key] is None:
        raise MalformedPayload(f"{where} is missing")
    return as_object(obj[key], where)


def optional_object(obj: Payload, key: str, where: str) -> Payload | None:
    """``obj[key]`` if present and not null (then it must be an object), else ``None``."""
    value = obj.get(key)
    return None if value is None else as_object(value, where)


def as_object(value: object, where: str) -> Payload:
    """``value`` if it is a JSON object, else malformed."""
    if not isinstance(value, dict):
        raise MalformedPayload(f"{where} is a JSON {json_type(value)}, expected an object")
    return value


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for messages."""
    names: list[tuple[type, str]] = [
        (bool, "boolean"),
        (int, "number"),
        (float, "number"),
        (str, "string"),
        (list, "array"),
        (dict, "object"),
    ]
    if value is None:
        return "null"
    return next((name for kind, name in names if isinstance(value, kind)), "value")


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup (``name`` in lower case); works on plain dicts too."""
    value = headers.get(name)
    if value is not None:
        return value
    for key, candidate in headers.items():
        if key.lower() == name:
            return candidate
    return None
