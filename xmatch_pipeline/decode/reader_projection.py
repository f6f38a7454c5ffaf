"""The reader schema of the header-only decode: what it reads, and why that is enough.

Resolving a writer schema against a smaller reader schema still walks every byte of the
record, but fastavro *skips* the fields the reader lacks, and a skip checks less than a
read: a skipped string is never checked to be UTF-8, a skipped enum index never checked
against its symbols, a skipped map's keys are strings too. An alert whose skipped fields
hold such bytes would pass and then break every downstream reader. So the projection keeps:

- the header the pipeline routes on: ``schemavsn``, ``objectId``, ``candid`` and
  ``candidate.ra`` / ``candidate.dec``;
- every part of the schema that holds a string, an enum or a map, wherever it is nested
  (records are projected to those fields, arrays and unions keep their projected items).

What it still skips are numbers, booleans, bytes and fixed values, whose every bit pattern
a reader accepts. Union indexes, lengths, block counts and the trailing bytes are checked
by the skip itself and by the decoder. An alert that passes thus decodes in full with any
Avro reader.
"""

from __future__ import annotations

from typing import Any

HEADER_FIELDS = ("schemavsn", "objectId", "candid")
POSITION_FIELDS = ("ra", "dec")
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = ("record", "enum", "fixed")


def full_name(node: dict[str, Any], namespace: str | None) -> str:
    """The full name of a named type defined in ``namespace`` (Avro's naming rules)."""
    name: str = node["name"]
    if "." in name:
        return name
    space = node.get("namespace", namespace)
    return f"{space}.{name}" if space else name


def _reference_name(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


class _Projector:
    """Walks a writer schema document once, in order, as Avro defines named types."""

    def __init__(self) -> None:
        #: full name → its writer definition and the namespace it was defined in.
        self.definitions: dict[str, tuple[dict[str, Any], str | None]] = {}
        self.emitted: set[str] = set()
        self._needs: dict[str, bool] = {}

    def collect(self, node: Any, namespace: str | None) -> None:
        """Record every named type's definition (they may be referenced before projection)."""
        if isinstance(node, list):
            for branch in node:
                self.collect(branch, namespace)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in _NAMED:
                full = full_name(node, namespace)
                self.definitions.setdefault(full, (node, namespace))
                inner = full.rpartition(".")[0] or None
                for entry in node.get("fields", []) if kind == "record" else []:
                    self.collect(entry["type"], inner)
            elif kind == "array":
                self.collect(node["items"], namespace)
            elif kind == "map":
                self.collect(node["values"], namespace)
            elif isinstance(kind, dict | list):
                self.collect(kind, namespace)

    def needs(self, node: Any, namespace: str | None) -> bool:
        """Whether a full read of ``node`` checks something a skip does not."""
        if isinstance(node, str):
            if node == "string":
                return True
            if node in _PRIMITIVES:
                return False
            return self._named_needs(_reference_name(node, namespace))
        if isinstance(node, list):
            return any(self.needs(branch, namespace) for branch in node)
        kind = node.get("type")
        if kind in ("enum", "map"):
            return True
        if kind == "record":
            return self._named_needs(full_name(node, namespace))
        if kind == "array":
            return self.needs(node["items"], namespace)
        if kind == "fixed":
            return False
        return self.needs(kind, namespace)

    def _named_needs(self, full: str) -> bool:
        if full in self._needs:
            return self._needs[full]
        definition = self.definitions.get(full)
        if definition is None:
            return False  # an unknown name: fastavro's parse already refused the schema
        node, _ = definition
        if node["type"] != "record":
            result = bool(node["type"] == "enum")
        else:
            self._needs[full] = False  # a recursive record: assume no until shown otherwise
            inner = full.rpartition(".")[0] or None
            result = any(self.needs(entry["type"], inner) for entry in node["fields"])
        self._needs[full] = result
        return result

    def project(self, node: Any, namespace: str | None, keep: dict[str, Any] | None = None) -> Any:
        """The reader form of ``node``: its checked parts only, plus ``keep`` (field → subtree
        to keep, or True for the whole field)."""
        if isinstance(node, str):
            if node in _PRIMITIVES:
                return node
            full = _reference_name(node, namespace)
            if full in self.emitted or full not in self.definitions:
                return full
            definition, defined_in = self.definitions[full]
            return self.project(definition, defined_in, keep)
        if isinstance(node, list):
            return [self.project(branch, namespace) for branch in node]
        kind = node.get("type")
        if kind == "array":
            return {"type": "array", "items": self.project(node["items"], namespace)}
        if kind == "map":
            return {"type": "map", "values": self.project(node["values"], namespace)}
        if kind in ("enum", "fixed"):
            self.emitted.add(full_name(node, namespace))
            return {key: value for key, value in node.items() if key != "doc"}
        if kind == "record":
            return self._project_record(node, namespace, keep or {})
        return self.project(kind, namespace, keep)

    def _project_record(
        self, node: dict[str, Any], namespace: str | None, keep: dict[str, Any]
    ) -> dict[str, Any]:
        full = full_name(node, namespace)
        self.emitted.add(full)
        inner = full.rpartition(".")[0] or None
        fields = []
        for entry in node["fields"]:
            wanted = keep.get(entry["name"])
            if wanted is True:
                fields.append({"name": entry["name"], "type": self._kept(entry["type"], inner)})
            elif wanted is not None or self.needs(entry["type"], inner):
                subtree = wanted if isinstance(wanted, dict) else None
                fields.append(
                    {"name": entry["name"], "type": self.project(entry["type"], inner, subtree)}
                )
        return {"type": "record", "name": full, "fields": fields}

    def _kept(self, node: Any, namespace: str | None) -> Any:
        """A field kept whole: its writer type, with named types defined once."""
        if isinstance(node, dict) and node.get("type") in _NAMED:
            return self.project(node, namespace, {entry["name"]: True for entry in node["fields"]})
        return self.project(node, namespace) if not isinstance(node, str) else node


def header_reader_schema(document: dict[str, Any]) -> dict[str, Any]:
    """The reader schema of the header-only decode for a ZTF alert's writer schema.

    ``document`` must have the ZTF shape (the header fields, ``candidate`` a record with
    double ``ra`` and ``dec``); record names are kept so that Avro's resolution matches them.
    """
    projector = _Projector()
    projector.collect(document, None)
    keep: dict[str, Any] = dict.fromkeys(HEADER_FIELDS, True)
    keep["candidate"] = dict.fromkeys(POSITION_FIELDS, True)
    projected: dict[str, Any] = projector.project(document, None, keep)
    return projected
