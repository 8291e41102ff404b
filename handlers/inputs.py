"""Strict readers of client input for ApiHandler: JSON objects without repeated keys, an ASCII Content-Length."""

import json
import re

_CONTENT_LENGTH = re.compile(r"[0-9]+")


class DuplicateKey(ValueError):
    """A JSON object repeats a key (args[0]): "last one wins" lets a proxy or a log read another value."""


def _unique_keys(pairs):
    data = dict(pairs)
    if len(data) != len(pairs):
        seen = set()
        raise DuplicateKey(next(key for key, _ in pairs if key in seen or seen.add(key)))
    return data


def loads(raw):
    """json.loads, but DuplicateKey for an object (at any depth) that repeats a key."""
    return json.loads(raw, object_pairs_hook=_unique_keys)


def declared_length(headers, huge):
    """Content-Length as an int when it is ASCII digits (19 or more: `huge`), else None ("²" is a digit to isdigit)."""
    length = headers.get("Content-Length")
    if length is None or not _CONTENT_LENGTH.fullmatch(length):
        return None
    return int(length) if len(length) <= 18 else huge
