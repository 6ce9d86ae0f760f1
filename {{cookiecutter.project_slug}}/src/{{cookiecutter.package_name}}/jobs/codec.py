"""The one JSON encoding used for payloads, results and responses."""

from collections.abc import Iterable
from typing import Any

import orjson

# orjson refuses deeper structures when encoding; refusing them on the way in keeps every
# accepted payload and result storable and showable.
MAX_DEPTH = 64


class EncodeError(ValueError):
    """A value cannot be stored as JSON."""


def dumps(value: Any) -> str:
    """Encode as compact JSON text, raising EncodeError for anything JSON cannot carry."""
    try:
        return orjson.dumps(value).decode()
    except TypeError as exc:
        raise EncodeError(str(exc)) from None


def nesting_depth(value: Any) -> int:
    """How deeply lists and objects nest in `value` (a scalar is 0), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest
