"""Rubin's alert schemas by schema id: the versions ``lsst-alert-packet`` ships, or a
schema registry.

A Rubin message names its writer schema by id only (``wire_format``). Rubin numbers its
schemas ``major * 100 + minor`` (7.4 is 704, 11.1 is 1101), as ``lsst-alert-packet``'s
``Schema.get_schema_id`` does. Two sources answer "which schema is id N":

- :class:`PackagedLsstSchemas`: every version installed with ``lsst-alert-packet``
  (``schema/<major>/<minor>/lsst.v<major>_<minor>.alert.avsc``), read from the package's
  files without importing it;
- :class:`RegistryLsstSchemas`: a Confluent-compatible schema registry through
  confluent-kafka's ``SchemaRegistryClient``, each answer parsed once and kept.

An id neither knows is the message's fault (:class:`AlertDecodeError`, dead-lettered); a
registry that does not answer within its bounds is the system's
(:class:`SchemaRegistryUnavailableError`: the run fails and the range runs again).
"""

from __future__ import annotations

import json
import re
import threading
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any, Final, Protocol

from xmatch_pipeline.decode.alert_schema import (
    MAX_CACHED_SCHEMAS,
    AlertSchema,
    inline_named_types,
    schema_from_json,
    schema_from_text,
)
from xmatch_pipeline.decode.errors import AlertDecodeError

PACKAGE: Final = "lsst-alert-packet"
_ALERT_FILE = re.compile(r"lsst\.v(\d+)_(\d+)\.alert\.avsc")


class SchemaRegistryUnavailableError(RuntimeError):
    """The schema registry did not answer within its timeout and retries (the system's fault)."""


class LsstSchemaSource(Protocol):
    """Writer schemas of Rubin alerts by their wire-format id."""

    def schema_for_id(self, schema_id: int) -> AlertSchema: ...


def rubin_schema_id(major: int, minor: int) -> int:
    """Rubin's id of schema ``major.minor`` (``lsst-alert-packet``'s rule: 11.1 → 1101)."""
    return int(f"{major}{minor:02d}")


def _schema_folder() -> Path:
    try:
        distribution = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise ValueError(
            f"LSST topics need Rubin's schemas: install {PACKAGE} "
            "(pip install 'xmatch-pipeline[lsst]') or set XMATCH_LSST_SCHEMA_REGISTRY_URL"
        ) from None
    return Path(str(distribution.locate_file("lsst/alert/packet/schema")))


def _load_version(folder: Path) -> dict[str, Any]:
    """The alert schema of one version folder, every named type inlined at its first use."""
    named: dict[str, Any] = {}
    top: dict[str, Any] | None = None
    for path in sorted(folder.glob("*.avsc")):
        document = json.loads(path.read_text("utf-8"))
        named[path.stem] = document
        if _ALERT_FILE.fullmatch(path.name):
            top = document
    if top is None:
        raise ValueError(f"{folder}: no lsst.v*_*.alert.avsc")
    inlined: dict[str, Any] = inline_named_types(top, named, set())
    return inlined


@cache
def packaged_lsst_schemas() -> dict[int, AlertSchema]:
    """Every alert schema ``lsst-alert-packet`` ships, by Rubin's schema id."""
    schemas: dict[int, AlertSchema] = {}
    for path in sorted(_schema_folder().glob("*/*/lsst.v*_*.alert.avsc")):
        found = _ALERT_FILE.fullmatch(path.name)
        if found is None:
            continue
        major, minor = int(found.group(1)), int(found.group(2))
        schemas[rubin_schema_id(major, minor)] = schema_from_json(_load_version(path.parent))
    if not schemas:
        raise ValueError(f"{PACKAGE} is installed but holds no alert schema")
    return schemas


def packaged_sample_alerts() -> dict[int, Path]:
    """The sample alert (``fakeAlert.avro``, a container file) of each shipped version."""
    samples: dict[int, Path] = {}
    for path in sorted(_schema_folder().glob("*/*/sample_data/fakeAlert.avro")):
        major, minor = int(path.parent.parent.parent.name), int(path.parent.parent.name)
        samples[rubin_schema_id(major, minor)] = path
    return samples


class PackagedLsstSchemas:
    """The schemas of ``lsst-alert-packet``, loaded once per process."""

    def __init__(self) -> None:
        self._schemas = packaged_lsst_schemas()

    @property
    def known_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self._schemas))

    def schema_for_id(self, schema_id: int) -> AlertSchema:
        schema = self._schemas.get(schema_id)
        if schema is None:
            known = ", ".join(str(known) for known in self.known_ids)
            raise AlertDecodeError(
                f"unknown LSST schema id {schema_id}: {PACKAGE} ships {known} (a newer "
                f"schema needs a newer {PACKAGE}, or XMATCH_LSST_SCHEMA_REGISTRY_URL)"
            )
        return schema


class RegistryLsstSchemas:
    """Schemas from a Confluent-compatible registry, each id asked for once.

    Each request is bounded by ``timeout_seconds`` and retried ``max_retries`` times with
    exponential backoff from ``retry_wait_seconds`` (confluent-kafka's own retry loop),
    so a lookup lasts at most about ``(max_retries + 1) * timeout_seconds`` plus the waits.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_seconds: float = 10.0,
        max_retries: int = 3,
        retry_wait_seconds: float = 0.5,
    ) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self.url = url
        self.client = SchemaRegistryClient(
            {
                "url": url,
                "timeout": timeout_seconds,
                "max.retries": max_retries,
                "retries.wait.ms": int(retry_wait_seconds * 1000),
                "retries.max.wait.ms": int(max(retry_wait_seconds, 1.0) * 4000),
            }
        )
        self._bounds = f"{timeout_seconds:g} s a request, {max_retries} retries"
        self._cache: dict[int, AlertSchema] = {}
        self._lock = threading.Lock()

    def schema_for_id(self, schema_id: int) -> AlertSchema:
        cached = self._cache.get(schema_id)
        if cached is not None:
            return cached
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            answer = self.client.get_schema(schema_id)
        except SchemaRegistryError as error:
            if error.http_status_code == 404:
                raise AlertDecodeError(
                    f"unknown LSST schema id {schema_id}: the schema registry at {self.url} "
                    f"does not know it ({error.error_message})"
                ) from error
            raise self._unavailable(schema_id, error) from error
        except Exception as error:  # httpx's transport errors, after the client's retries
            raise self._unavailable(schema_id, error) from error
        if (answer.schema_type or "AVRO").upper() != "AVRO":
            raise AlertDecodeError(
                f"LSST schema id {schema_id} is a {answer.schema_type} schema, not Avro"
            )
        schema = schema_from_text((answer.schema_str or "").encode("utf-8"))
        with self._lock:
            if len(self._cache) >= MAX_CACHED_SCHEMAS:
                self._cache.pop(next(iter(self._cache)))
            self._cache[schema_id] = schema
        return schema

    def register_output_schema(self, subject: str, schema: AlertSchema) -> int:
        """The registry's id of ``schema`` under ``subject`` (registered if new)."""
        from confluent_kafka.schema_registry import Schema

        try:
            registered: int = self.client.register_schema(
                subject, Schema(schema.text.decode("utf-8"), "AVRO")
            )
        except Exception as error:
            raise SchemaRegistryUnavailableError(
                f"could not register the enriched LSST schema under subject {subject!r} at "
                f"{self.url} ({type(error).__name__}: {error}; {self._bounds}): check the "
                "registry and that this pipeline may write that subject, then run the "
                "range again"
            ) from error
        return registered

    def _unavailable(self, schema_id: int, error: BaseException) -> SchemaRegistryUnavailableError:
        return SchemaRegistryUnavailableError(
            f"the schema registry at {self.url} did not give LSST schema id {schema_id} "
            f"({type(error).__name__}: {error}; {self._bounds}): check the registry "
            "(XMATCH_LSST_SCHEMA_REGISTRY_URL), then run the range again"
        )
