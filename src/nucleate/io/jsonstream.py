"""Reading a JSON array one element at a time (a Label Studio export of 10⁴ tasks is ~1 GB as Python objects)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["JsonStreamError", "iter_json_array"]

_CHUNK = 1 << 20  # characters read at a time
_SPACE = " \t\n\r"
_NUMBER = "0123456789.eE+-"  # what may continue a number cut at the end of the buffer


class JsonStreamError(ValueError):
    """The file is not a JSON array, or not valid JSON; the message says where (element index, character)."""


def iter_json_array(path: str | Path, chunk: int = _CHUNK) -> Iterator[Any]:
    """The elements of the JSON array in ``path`` (UTF-8), decoded one by one with :mod:`json`.

    Memory holds one element and at most ``chunk`` characters of text beyond it. Raises
    :class:`JsonStreamError` when the top level is not an array (``"expected a JSON list, got ..."``) or the text
    is not valid JSON (the element index and character offset where it stops being so); elements before the
    error have been yielded.
    """
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as fh:
        buf, offset, pos, eof = "", 0, 0, False  # offset: characters of the file before buf

        def more(grow: bool = False) -> bool:
            """Read on; ``grow``: at least as much as is buffered (an element longer than a chunk costs O(n))."""
            nonlocal buf, pos, offset, eof
            if eof:
                return False
            text = fh.read(max(chunk, len(buf) - pos) if grow else chunk)
            if not text:
                eof = True
                return False
            offset += pos
            buf, pos = buf[pos:] + text, 0
            return True

        def skip_space() -> str:
            """The next non-space character ("" at the end of the file); ``pos`` points at it."""
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in _SPACE:
                    pos += 1
                if pos < len(buf):
                    return buf[pos]
                if not more():
                    return ""

        first = skip_space()
        if first != "[":
            kind = "nothing (empty file)" if first == "" else {"{": "an object"}.get(first, f"{first!r}")
            raise JsonStreamError(f"expected a JSON list, got {kind} at character {offset + pos}")
        pos += 1
        index = 0
        if skip_space() == "]":
            pos += 1
        else:
            while True:
                while True:
                    try:
                        value, end = decoder.raw_decode(buf, pos)
                    except json.JSONDecodeError as exc:
                        where = offset + exc.pos
                        if more(grow=True):  # maybe the element runs on past this chunk
                            continue
                        raise JsonStreamError(f"element {index}: {exc.msg} at character {where}") from None
                    after = buf[end:].lstrip(_SPACE)[:1]
                    if (not after or after in _NUMBER) and more(grow=True):  # a number may go on: decode again
                        continue
                    break
                pos = end
                yield value
                index += 1
                sep = skip_space()
                if sep == ",":
                    pos += 1
                    skip_space()
                    continue
                if sep == "]":
                    pos += 1
                    break
                raise JsonStreamError(f"after element {index - 1}: expected ',' or ']' at character {offset + pos}, "
                                      f"got {sep!r}" if sep else f"after element {index - 1}: the list is not "
                                      f"closed (file ends at character {offset + pos})")
        if skip_space():
            raise JsonStreamError(f"extra data after the list at character {offset + pos}")
