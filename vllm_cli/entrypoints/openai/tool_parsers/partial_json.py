"""A tolerant scanner for JSON that may still be arriving.

`scan_value(text, i)` reads one JSON value starting at `text[i]` and returns a `Node`. When the text
ends inside the value the node is incomplete, and `node.canon` is the part of the value's canonical
form that can no longer change. The canonical form is what `json.dumps(value, ensure_ascii=False)`
writes (", " and ": " separators), so the prefixes a stream emits concatenate to exactly the text a
non-streamed parse of the whole value gives. Text that cannot become JSON raises `JSONScanError`.

Lenient where models are: raw control characters inside strings are accepted (written escaped);
a lone surrogate escape becomes U+FFFD.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any


class JSONScanError(ValueError):
    """The text cannot be (the start of) a JSON value."""


@dataclass
class Node:
    kind: str  # "object", "array", "string", "number", "literal"
    complete: bool = False
    canon: str = ""  # stable canonical prefix; the whole canonical text once complete
    end: int = -1  # index just past the value (complete nodes only)
    value: Any = None  # the Python value (complete nodes only)
    # objects: (key, value node) in order; key None while the key string is unfinished, value node
    # None while the value has not begun
    members: list[tuple[str | None, Node | None]] = field(default_factory=list)
    items: list[Node] = field(default_factory=list)  # arrays

    def member(self, key: str) -> Node | None:
        """The value node of the first member named `key` (None: absent or not begun)."""
        for k, v in self.members:
            if k == key:
                return v
        return None

    def keys(self) -> list[str]:
        return [k for k, _ in self.members if k is not None]


_WS = re.compile(r"[ \t\n\r]*")
_STR_RUN = re.compile(r'[^"\\]+')
_NUM_PREFIX = re.compile(r"-?[0-9]*(?:\.[0-9]*)?(?:[eE][+-]?[0-9]*)?")
_NUM = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_LITERALS = {"true": True, "false": False, "null": None}


def skip_ws(text: str, i: int) -> int:
    """Index of the first non-whitespace character at or after `i`."""
    return _WS.match(text, i).end()  # type: ignore[union-attr]


def _esc(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)[1:-1]


def _scan_string(text: str, i: int) -> Node:
    n = len(text)
    parts: list[str] = []
    i += 1
    while True:
        m = _STR_RUN.match(text, i)
        if m:
            parts.append(m.group())
            i = m.end()
        if i >= n:
            return Node("string", canon='"' + _esc("".join(parts)))
        if text[i] == '"':
            s = "".join(parts)
            return Node("string", complete=True, canon='"' + _esc(s) + '"', end=i + 1, value=s)
        # a backslash
        if i + 1 >= n:
            return Node("string", canon='"' + _esc("".join(parts)))
        e = text[i + 1]
        if e in _ESCAPES:
            parts.append(_ESCAPES[e])
            i += 2
            continue
        if e != "u":
            raise JSONScanError(f"bad escape \\{e}")
        hex4 = text[i + 2 : i + 6]
        if len(hex4) < 4:
            if not re.fullmatch(r"[0-9a-fA-F]*", hex4):
                raise JSONScanError("bad \\u escape")
            return Node("string", canon='"' + _esc("".join(parts)))
        if not _HEX4.fullmatch(hex4):
            raise JSONScanError("bad \\u escape")
        cp = int(hex4, 16)
        i += 6
        if 0xD800 <= cp < 0xDC00:  # a high surrogate: wants a low one next
            nxt = text[i : i + 6]
            if len(nxt) < 6 and "\\u".startswith(nxt[:2]) and re.fullmatch(r"[0-9a-fA-F]*", nxt[2:]):
                if i + len(nxt) >= n:  # the pair may still be arriving
                    return Node("string", canon='"' + _esc("".join(parts)))
            if nxt.startswith("\\u") and _HEX4.fullmatch(nxt[2:]) and 0xDC00 <= int(nxt[2:], 16) < 0xE000:
                parts.append(chr(0x10000 + ((cp - 0xD800) << 10) + (int(nxt[2:], 16) - 0xDC00)))
                i += 6
                continue
            parts.append("\ufffd")
        elif 0xDC00 <= cp < 0xE000:
            parts.append("\ufffd")
        else:
            parts.append(chr(cp))


def _scan_number(text: str, i: int) -> Node:
    m = _NUM_PREFIX.match(text, i)
    assert m is not None
    if m.end() >= len(text):  # more digits may follow
        return Node("number")
    raw = m.group()
    if not _NUM.fullmatch(raw):
        raise JSONScanError(f"bad number {raw!r}")
    value = json.loads(raw)
    return Node("number", complete=True, canon=json.dumps(value), end=m.end(), value=value)


def _scan_literal(text: str, i: int) -> Node:
    for word, value in _LITERALS.items():
        if text.startswith(word, i):
            return Node("literal", complete=True, canon=word, end=i + len(word), value=value)
        rest = text[i:]
        if word.startswith(rest):  # text ends inside the word
            return Node("literal")
    raise JSONScanError(f"unexpected {text[i]!r}")


def _scan_object(text: str, i: int) -> Node:
    node = Node("object")
    out = ["{"]
    n = len(text)
    i = skip_ws(text, i + 1)
    if i < n and text[i] == "}":
        node.complete, node.canon, node.end, node.value = True, "{}", i + 1, {}
        return node
    while True:
        if i >= n:
            break
        if text[i] != '"':
            raise JSONScanError(f"expected a key, got {text[i]!r}")
        key = _scan_string(text, i)
        out.append(key.canon)
        if not key.complete:
            node.members.append((None, None))
            break
        i = skip_ws(text, key.end)
        if i >= n:
            node.members.append((key.value, None))
            break
        if text[i] != ":":
            raise JSONScanError(f"expected ':', got {text[i]!r}")
        out.append(": ")
        i = skip_ws(text, i + 1)
        if i >= n:
            node.members.append((key.value, None))
            break
        value = scan_value(text, i)
        node.members.append((key.value, value))
        out.append(value.canon)
        if not value.complete:
            break
        i = skip_ws(text, value.end)
        if i >= n:
            break
        if text[i] == ",":
            out.append(", ")
            i = skip_ws(text, i + 1)
            continue
        if text[i] == "}":
            out.append("}")
            node.complete, node.end = True, i + 1
            node.value = {k: v.value for k, v in node.members if k is not None and v is not None}
            break
        raise JSONScanError(f"expected ',' or '}}', got {text[i]!r}")
    node.canon = "".join(out)
    return node


def _scan_array(text: str, i: int) -> Node:
    node = Node("array")
    out = ["["]
    n = len(text)
    i = skip_ws(text, i + 1)
    if i < n and text[i] == "]":
        node.complete, node.canon, node.end, node.value = True, "[]", i + 1, []
        return node
    while i < n:
        item = scan_value(text, i)
        node.items.append(item)
        out.append(item.canon)
        if not item.complete:
            break
        i = skip_ws(text, item.end)
        if i >= n:
            break
        if text[i] == ",":
            out.append(", ")
            i = skip_ws(text, i + 1)
            continue
        if text[i] == "]":
            out.append("]")
            node.complete, node.end = True, i + 1
            node.value = [it.value for it in node.items]
            break
        raise JSONScanError(f"expected ',' or ']', got {text[i]!r}")
    node.canon = "".join(out)
    return node


def scan_value(text: str, i: int) -> Node:
    """Scan the JSON value that starts at `text[i]` (no leading whitespace)."""
    if i >= len(text):
        return Node("unknown")
    c = text[i]
    try:
        if c == "{":
            return _scan_object(text, i)
        if c == "[":
            return _scan_array(text, i)
        if c == '"':
            return _scan_string(text, i)
    except RecursionError as e:
        raise JSONScanError("nested too deeply") from e
    if c in "-0123456789":
        return _scan_number(text, i)
    return _scan_literal(text, i)


def canonical_object(text: str) -> str | None:
    """The canonical JSON text of `text` if it is exactly one JSON object (surrounding whitespace
    allowed), else None."""
    i = skip_ws(text, 0)
    if i >= len(text) or text[i] != "{":
        return None
    try:
        node = scan_value(text, i)
    except JSONScanError:
        return None
    if not node.complete or skip_ws(text, node.end) != len(text):
        return None
    return node.canon
