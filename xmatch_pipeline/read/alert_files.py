"""Alert packets on disk: single ``.avro`` files, folders of them, ZTF nightly ``.tar.gz``.

Yields the raw bytes untouched (a replay must produce exactly what ZTF wrote) with a name
that says where each came from; decoding is the codec's job.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ALERT_SUFFIX = ".avro"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class AlertFileError(OSError):
    """An input path that cannot be read as alerts; the message names the file."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True, slots=True)
class AlertPacket:
    """The bytes of one alert and where they came from (a file, or ``archive::member``)."""

    source: str
    data: bytes


def _is_archive(path: Path) -> bool:
    return path.name.endswith(ARCHIVE_SUFFIXES)


def _is_alert_input(path: Path) -> bool:
    return path.name.endswith(ALERT_SUFFIX) or _is_archive(path)


def expand_alert_paths(paths: Iterable[Path | str]) -> list[Path]:
    """The alert files and archives named by ``paths``, folders searched recursively, sorted."""
    expanded: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            expanded.extend(
                sorted(
                    found for found in path.rglob("*") if found.is_file() and _is_alert_input(found)
                )
            )
        elif path.is_file():
            if not _is_alert_input(path):
                raise AlertFileError(
                    path,
                    f"not an alert file: expected {ALERT_SUFFIX} or {'/'.join(ARCHIVE_SUFFIXES)}",
                )
            expanded.append(path)
        else:
            raise AlertFileError(path, "no such file or folder")
    return expanded


def _read_archive(path: Path) -> Iterator[AlertPacket]:
    try:
        with tarfile.open(path, mode="r|*") as archive:
            for member in archive:
                if not member.isfile() or not member.name.endswith(ALERT_SUFFIX):
                    continue
                extracted = archive.extractfile(member)
                if extracted is None:
                    continue
                data = extracted.read()
                if len(data) != member.size:
                    raise AlertFileError(
                        path, f"truncated archive: member {member.name} is cut short"
                    )
                yield AlertPacket(f"{path}::{member.name}", data)
    except (tarfile.TarError, EOFError, zlib.error) as error:
        raise AlertFileError(path, f"corrupt or truncated archive: {error}") from error
    except OSError as error:
        if isinstance(error, AlertFileError):
            raise
        raise AlertFileError(path, f"cannot read archive: {error}") from error


def read_alert_file(path: Path) -> Iterator[AlertPacket]:
    """The alerts in one ``.avro`` file or one archive."""
    if _is_archive(path):
        yield from _read_archive(path)
        return
    try:
        yield AlertPacket(str(path), path.read_bytes())
    except OSError as error:
        raise AlertFileError(path, f"cannot read: {error.strerror or error}") from error


def iter_alert_packets(paths: Iterable[Path | str]) -> Iterator[AlertPacket]:
    """Every alert under ``paths`` in a stable order; stops with AlertFileError on bad input."""
    for path in expand_alert_paths(paths):
        yield from read_alert_file(path)
