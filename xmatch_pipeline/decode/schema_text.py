"""Editing a schema's JSON text without re-serialising it: the rest stays byte for byte.

Consumers compare the output's embedded schema with the input's; ``json.dumps`` of a parsed
schema would change whitespace, escapes and number spelling everywhere. Here the text is
scanned with the standard JSON decoder for the spans of the top-level ``fields`` array and
its elements, and only those spans are cut or extended.
"""

from __future__ import annotations

import json
from typing import Any

_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\n\r"


def _skip_whitespace(text: str, position: int) -> int:
    while position < len(text) and text[position] in _WHITESPACE:
        position += 1
    return position


def _expect(text: str, position: int, character: str) -> int:
    position = _skip_whitespace(text, position)
    if position >= len(text) or text[position] != character:
        raise ValueError(f"schema text: expected {character!r} at character {position}")
    return position + 1


def _top_level_fields_span(text: str) -> tuple[int, int]:
    """``[start, end)`` of the top-level ``fields`` array (the last one, as ``json`` reads)."""
    position = _expect(text, 0, "{")
    span: tuple[int, int] | None = None
    while True:
        position = _skip_whitespace(text, position)
        if position < len(text) and text[position] == "}":
            break
        start = _expect(text, position, '"')
        key, position = json.decoder.scanstring(text, start)  # type: ignore[attr-defined]
        position = _skip_whitespace(text, _expect(text, position, ":"))
        value, end = _DECODER.raw_decode(text, position)
        if key == "fields" and isinstance(value, list):
            span = (position, end)
        position = _skip_whitespace(text, end)
        if position < len(text) and text[position] == ",":
            position += 1
    if span is None:
        raise ValueError("schema text: no top-level 'fields' array")
    return span


def _element_spans(text: str, start: int, end: int) -> list[tuple[int, int, Any]]:
    """``(start, end, value)`` of each element of the array at ``text[start:end]``."""
    spans = []
    position = _skip_whitespace(text, start + 1)
    while position < end - 1:
        value, element_end = _DECODER.raw_decode(text, position)
        spans.append((position, element_end, value))
        position = _skip_whitespace(text, element_end)
        if text[position] == ",":
            position = _skip_whitespace(text, position + 1)
    return spans


def with_last_field(text: bytes, field: dict[str, Any]) -> bytes:
    """``text`` with ``field`` as the last top-level field, replacing one of the same name;
    every other byte of ``text`` is kept as it was."""
    source = text.decode("utf-8")
    array_start, array_end = _top_level_fields_span(source)
    elements = _element_spans(source, array_start, array_end)
    kept = [
        (start, end)
        for start, end, value in elements
        if not (isinstance(value, dict) and value.get("name") == field["name"])
    ]
    addition = json.dumps(field, ensure_ascii=False)
    if len(kept) == len(elements):
        if not kept:
            insert_at = array_start + 1
            edited = source[:insert_at] + addition + source[insert_at:]
        else:
            insert_at = kept[-1][1]
            edited = source[:insert_at] + ", " + addition + source[insert_at:]
        return edited.encode("utf-8")
    # Rebuild the array from the kept elements' own text, then the new field.
    inner = ", ".join([*(source[start:end] for start, end in kept), addition])
    edited = source[: array_start + 1] + inner + source[array_end - 1 :]
    return edited.encode("utf-8")
