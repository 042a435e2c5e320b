"""JSON text parsed in bounded steps, for request bodies too large to parse in one call.

`json.loads` is one C call that holds the GIL for the whole body (a 40 MB body: about 0.6 s),
so parsing it on a worker thread still stalls the event loop, and every other client, for that
long. `loads` here gives the same values (Python's own decoder does all the decoding) but walks
arrays and objects itself and hands the decoder bounded pieces: runs of whole array elements made
of numbers (numbers, and arrays of numbers at any depth) of at most RUN_CHARS characters, and
single values. Between pieces the interpreter may switch threads, so on a worker thread the
event loop waits at most one piece (about a millisecond) and the interpreter's switch interval.
A run's element boundaries are found with numpy (bracket depth over the run's characters), so a
body of numbers is parsed at about the speed of `json.loads`.

Values nested deeper than MAX_DEPTH are refused (`JsonDepthError`), as are the texts
`json.loads` refuses (`ValueError`, with its message).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

RUN_CHARS = 1 << 14  # characters decoded per call in a run of numeric elements (about 0.2 ms)
MAX_DEPTH = 64  # arrays and objects inside each other (a tensor has far fewer dimensions)

_NUMERIC = re.compile(r"[-+0-9.eE,\[\] \t\n\r]*")  # the characters of numbers and arrays of numbers
_SPACE = re.compile(r"[ \t\n\r]*")
_OPEN, _CLOSE, _COMMA = ord("["), ord("]"), ord(",")
_DECODER = json.JSONDecoder()


class JsonDepthError(ValueError):
    """A value nested deeper than MAX_DEPTH."""


def loads(data: bytes | str) -> Any:
    """`json.loads(data)`, decoded in bounded pieces (see the module docstring)."""
    text = data.decode(json.detect_encoding(data), "surrogatepass") if isinstance(data, bytes) else data
    if text.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    if len(text) <= RUN_CHARS and text.count("[") + text.count("{") <= MAX_DEPTH:
        return json.loads(text)  # small, and nested MAX_DEPTH deep at most: one short call
    pos = _SPACE.match(text, 0).end()  # type: ignore[union-attr]
    value, pos = _value(text, pos, 0)
    end = _SPACE.match(text, pos).end()  # type: ignore[union-attr]
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def _value(text: str, pos: int, depth: int) -> tuple[Any, int]:
    c = text[pos:pos + 1]
    if c == "[":
        return _array(text, pos, depth + 1)
    if c == "{":
        return _object(text, pos, depth + 1)
    return _DECODER.raw_decode(text, pos)  # a scalar (or the decoder's own error)


def _check_depth(text: str, pos: int, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise JsonDepthError(f"JSON Value nested too deeply (more than {MAX_DEPTH} levels) at char {pos}")


def _array(text: str, pos: int, depth: int) -> tuple[list[Any], int]:
    _check_depth(text, pos, depth)
    out: list[Any] = []
    pos = _SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
    if text[pos:pos + 1] == "]":
        return out, pos + 1
    while True:
        end = _run_end(text, pos, MAX_DEPTH - depth)
        if end > pos:
            out.extend(json.loads(f"[{text[pos:end]}]"))  # one bounded call: a run of numeric elements
            pos = end
        else:
            value, pos = _value(text, pos, depth)
            out.append(value)
        pos = _SPACE.match(text, pos).end()  # type: ignore[union-attr]
        c = text[pos:pos + 1]
        if c == "]":
            return out, pos + 1
        if c != ",":
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
        pos = _SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
        if text[pos:pos + 1] == "]":
            raise json.JSONDecodeError("Expecting value", text, pos)


def _object(text: str, pos: int, depth: int) -> tuple[dict[str, Any], int]:
    _check_depth(text, pos, depth)
    out: dict[str, Any] = {}
    pos = _SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
    if text[pos:pos + 1] == "}":
        return out, pos + 1
    while True:
        if text[pos:pos + 1] != '"':
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, pos)
        key, pos = _DECODER.raw_decode(text, pos)
        pos = _SPACE.match(text, pos).end()  # type: ignore[union-attr]
        if text[pos:pos + 1] != ":":
            raise json.JSONDecodeError("Expecting ':' delimiter", text, pos)
        pos = _SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
        out[key], pos = _value(text, pos, depth)
        pos = _SPACE.match(text, pos).end()  # type: ignore[union-attr]
        c = text[pos:pos + 1]
        if c == "}":
            return out, pos + 1
        if c != ",":
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
        pos = _SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]


def _run_end(text: str, pos: int, levels: int) -> int:
    """Where the run of whole numeric elements starting at `pos` ends (at a comma between
    elements, or at the bracket that closes the array), at most RUN_CHARS on and nested at most
    `levels` deep; `pos` when the element at `pos` is not numeric, longer than that, or deeper."""
    end = _NUMERIC.match(text, pos, pos + RUN_CHARS).end()  # type: ignore[union-attr]
    if end == pos:
        return pos
    chars = np.frombuffer(text[pos:end].encode("ascii"), np.uint8)
    depth = np.cumsum((chars == _OPEN).view(np.int8) - (chars == _CLOSE).view(np.int8), dtype=np.int32)
    closed = np.flatnonzero(depth < 0)
    if closed.size:  # the array closes inside the run: every element before its bracket
        cut = int(closed[0])
    elif end - pos < RUN_CHARS and end == len(text):
        return pos  # the text ends inside the array: the decoder reports it
    else:
        commas = np.flatnonzero((chars == _COMMA) & (depth == 0))
        if not commas.size:
            return pos
        cut = int(commas[-1])
    if cut and int(depth[:cut].max()) > levels:
        return pos  # nested too deeply for one call: walked level by level (and refused)
    return pos + cut


RELEASE_CHUNK = 4096  # list elements freed per step


def release(value: Any) -> None:
    """Drops a parsed value in bounded steps. Freeing millions of lists happens in one C call
    when the last reference goes (as long as building them took, and holding the GIL), so a
    large parsed body is taken apart here, a few thousand elements at a time, instead."""
    stack = [value]
    del value
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
            v.clear()
        elif isinstance(v, list) and v:
            first = v[0]
            if isinstance(first, list | dict) and len(first) > RELEASE_CHUNK:
                stack.extend(v)  # large elements: each taken apart in turn
                v.clear()
            elif len(v) > RELEASE_CHUNK:
                stack.extend(v[i:i + RELEASE_CHUNK] for i in range(0, len(v), RELEASE_CHUNK))
                v.clear()
        del v  # a small list (or a slice of one) is freed here, in one short step
