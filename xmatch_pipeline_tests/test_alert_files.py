"""Reading alert packets from files, folders and ZTF-style nightly archives."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from xmatch_pipeline.read.alert_files import (
    AlertFileError,
    expand_alert_paths,
    iter_alert_packets,
)


def _nightly_archive(tmp_path: Path, files: list[Path]) -> Path:
    """An archive laid out like ZTF's public ztf_public_YYYYMMDD.tar.gz: one alert per member."""
    archive = tmp_path / "ztf_public_20200101.tar.gz"
    with tarfile.open(archive, "w:gz") as handle:
        for path in files:
            handle.add(path, arcname=path.name)
    return archive


def test_folder_is_searched_recursively_in_sorted_order(
    shared_data_dir: Path, ztf_alert_files: list[Path]
) -> None:
    packets = list(iter_alert_packets([shared_data_dir / "ztf-alerts"]))
    assert [packet.source for packet in packets] == [str(path) for path in ztf_alert_files]
    assert len(packets) == 86
    assert packets[0].data == ztf_alert_files[0].read_bytes()


def test_archive_members_come_out_unchanged(tmp_path: Path, ztf_alert_files: list[Path]) -> None:
    chosen = ztf_alert_files[:5]
    archive = _nightly_archive(tmp_path, chosen)
    packets = list(iter_alert_packets([archive]))
    assert [packet.data for packet in packets] == [path.read_bytes() for path in chosen]
    assert packets[0].source == f"{archive}::{chosen[0].name}"


def test_folder_holding_an_archive_and_files(tmp_path: Path, ztf_alert_files: list[Path]) -> None:
    _nightly_archive(tmp_path, ztf_alert_files[:3])
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "a.avro").write_bytes(ztf_alert_files[3].read_bytes())
    (tmp_path / "notes.txt").write_text("not an alert")
    assert len(list(iter_alert_packets([tmp_path]))) == 4


def test_truncated_archive_names_the_file(tmp_path: Path, ztf_alert_files: list[Path]) -> None:
    archive = _nightly_archive(tmp_path, ztf_alert_files[:5])
    truncated = tmp_path / "truncated.tar.gz"
    data = archive.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(AlertFileError) as caught:
        list(iter_alert_packets([truncated]))
    assert caught.value.path == str(truncated)
    assert str(truncated) in str(caught.value)
    assert "truncated" in caught.value.reason


def test_garbage_archive_names_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"this is not gzip" * 64)
    with pytest.raises(AlertFileError, match=r"garbage\.tar\.gz"):
        list(iter_alert_packets([garbage]))


def test_missing_and_unsupported_paths(tmp_path: Path) -> None:
    with pytest.raises(AlertFileError, match="no such file or folder"):
        expand_alert_paths([tmp_path / "missing.avro"])
    other = tmp_path / "alerts.json"
    other.write_text("{}")
    with pytest.raises(AlertFileError, match=r"alerts\.json: not an alert file"):
        expand_alert_paths([other])
