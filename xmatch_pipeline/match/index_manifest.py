"""The small JSON file that describes a local catalog index on disk.

It lets a query know, without opening any Parquet file, which columns exist and which
HEALPix partitions hold rows, so a batch reads only the partitions its positions touch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
PARTITIONS_DIRECTORY = "partitions"
FORMAT_NAME = "xmatch-pipeline-local-catalog-index"
FORMAT_VERSION = 1


class IndexFormatError(ValueError):
    """A directory is not a readable local catalog index."""


@dataclass(frozen=True)
class IndexManifest:
    """What a local catalog index holds and how it is partitioned."""

    name: str
    id_column: str
    ra_column: str
    dec_column: str
    partition_order: int
    columns: tuple[str, ...]
    column_types: tuple[str, ...]
    pixel_rows: Mapping[int, int] = field(default_factory=dict)

    @property
    def row_count(self) -> int:
        return sum(self.pixel_rows.values())

    def write(self, directory: Path) -> None:
        document: dict[str, Any] = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "name": self.name,
            "id_column": self.id_column,
            "ra_column": self.ra_column,
            "dec_column": self.dec_column,
            "healpix_scheme": "nested",
            "partition_order": self.partition_order,
            "columns": [
                {"name": name, "type": type_name}
                for name, type_name in zip(self.columns, self.column_types, strict=True)
            ],
            "row_count": self.row_count,
            "pixel_rows": {str(pixel): rows for pixel, rows in sorted(self.pixel_rows.items())},
        }
        (directory / MANIFEST_FILE).write_text(json.dumps(document, indent=1) + "\n")

    @classmethod
    def read(cls, directory: Path) -> IndexManifest:
        path = directory / MANIFEST_FILE
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError as error:
            raise IndexFormatError(
                f"{directory} is not a local catalog index: {MANIFEST_FILE} is missing "
                "(build one with `xmatch-pipeline catalog build`)"
            ) from error
        except (OSError, json.JSONDecodeError) as error:
            raise IndexFormatError(f"cannot read {path}: {error}") from error
        if document.get("format") != FORMAT_NAME or document.get("version") != FORMAT_VERSION:
            raise IndexFormatError(
                f"{path}: unsupported index format {document.get('format')!r} version "
                f"{document.get('version')!r}; rebuild the index with this version"
            )
        try:
            return cls(
                name=str(document["name"]),
                id_column=str(document["id_column"]),
                ra_column=str(document["ra_column"]),
                dec_column=str(document["dec_column"]),
                partition_order=int(document["partition_order"]),
                columns=tuple(str(column["name"]) for column in document["columns"]),
                column_types=tuple(str(column["type"]) for column in document["columns"]),
                pixel_rows={
                    int(pixel): int(rows) for pixel, rows in document["pixel_rows"].items()
                },
            )
        except (KeyError, TypeError, ValueError) as error:
            raise IndexFormatError(f"{path}: malformed manifest ({error!r})") from error


def partition_path(directory: Path, partition_order: int, pixel: int) -> Path:
    """Where the rows of one HEALPix pixel live."""
    return directory / PARTITIONS_DIRECTORY / f"order{partition_order}-pixel{pixel}.parquet"
