"""The CDS XMatch engine: positions uploaded to CDS's sync endpoint, matches parsed back.

Built to survive the service's real failure modes (brief §2) without making them worse:
chunks of at most 50,000 rows sorted by HEALPix index as CDS asks; one request in flight by
default (parallel jobs get an address banned); connect and read timeouts; retries with
exponential backoff and jitter, bounded by a deadline per chunk, only for what a new
attempt can fix (timeouts, dropped connections, 5xx, an error page inside a 200, "Too many
jobs", a cut-short body); never for a 400 (the request is wrong: the service's
QUERY_STATUS message is raised) nor a 403 (the address is banned: retrying prolongs it).

The deadline bounds the whole exchange, not each socket read: the body is streamed and the
clock checked between reads (each read returns what one socket read brought, and every
timeout is capped by the time left), so an answer trickling in byte by byte is cut at the
deadline, overshooting it by at most one read-timeout slice. A cut body is a retriable
failure; past the deadline the chunk fails with one ``CdsUnavailableError``. Each answer is
checked before use (``match.cds.answer``: rows beyond the radius, ids never sent, several
"best" rows for one id); a table that fails is refused, not retried.

This research made use of the cross-match service provided by CDS, Strasbourg.
"""

from __future__ import annotations

import logging
import queue
import random
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import requests
import urllib3

from xmatch_pipeline.match.catalog_aliases import cds_catalog_parameter
from xmatch_pipeline.match.catalog_spec import CatalogSpec
from xmatch_pipeline.match.cds.answer import checked_source_rows
from xmatch_pipeline.match.cds.errors import (
    CdsBannedError,
    CdsRejectedError,
    CdsResponseError,
    CdsUnavailableError,
    CdsXmatchError,
    RetryableResponseError,
)
from xmatch_pipeline.match.cds.response import (
    ANGULAR_DISTANCE_COLUMN,
    UPLOAD_INDEX_COLUMN,
    body_preview,
    is_busy_message,
    is_html_page,
    query_status_message,
    read_raw_table,
    type_raw_table,
)
from xmatch_pipeline.match.cds.upload import (
    DEFAULT_CHUNK_ROWS,
    MAX_CHUNK_ROWS,
    UPLOAD_COLUMNS,
    UPLOAD_DEC_COLUMN,
    UPLOAD_RA_COLUMN,
    UploadChunk,
    upload_chunks,
    validate_positions,
)
from xmatch_pipeline.match.provenance import EngineIdentity

DEFAULT_CDS_XMATCH_URL = "https://cdsxmatch.cds.unistra.fr/xmatch/api/v1/sync"
#: More parallel jobs than this risk a ban; CDS publishes no limit and asks for one or two.
MAX_REQUESTS_IN_FLIGHT = 4

_LOG = logging.getLogger(__name__)
_RETRYABLE_TRANSPORT_ERRORS = (
    requests.Timeout,
    requests.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)
_RETRYABLE_STATUSES = frozenset({408, 429})
#: The most one read of the body asks for; a read returns as soon as any bytes arrive.
_READ_BYTES = 256 * 1024


@dataclass(frozen=True)
class CdsClientSettings:
    """How the client talks to CDS. Defaults suit ALLWISE chunks of 50,000 rows."""

    url: str = DEFAULT_CDS_XMATCH_URL
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    max_in_flight: int = 1
    connect_timeout_seconds: float = 10.0
    #: A 50,000-row ALLWISE job takes minutes on a busy day.
    read_timeout_seconds: float = 300.0
    #: Total time one chunk may take, all attempts and waits included.
    deadline_seconds: float = 900.0
    max_attempts: int = 8
    backoff_initial_seconds: float = 2.0
    backoff_max_seconds: float = 120.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"CDS XMatch URL must be http(s)://…, got {self.url!r}")
        if not 1 <= self.max_in_flight <= MAX_REQUESTS_IN_FLIGHT:
            raise ValueError(
                f"max_in_flight must be in [1, {MAX_REQUESTS_IN_FLIGHT}] (more parallel jobs "
                f"get the address banned by CDS), got {self.max_in_flight}"
            )
        for name in (
            "connect_timeout_seconds",
            "read_timeout_seconds",
            "deadline_seconds",
            "backoff_initial_seconds",
            "backoff_max_seconds",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 1 <= self.chunk_rows <= MAX_CHUNK_ROWS:
            raise ValueError(
                f"chunk_rows must be in [1, {MAX_CHUNK_ROWS}] (CDS asks for at most 50,000 "
                f"rows a request), got {self.chunk_rows}"
            )
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")


@dataclass(frozen=True)
class _ChunkAnswer:
    chunk: UploadChunk
    table: pd.DataFrame  # the raw (text) CSV answer, checked
    source_rows: np.ndarray  # each row's position in the caller's DataFrame


class _RetryableAttemptError(Exception):
    """One attempt failed in a way a new attempt may fix."""

    def __init__(self, failure: str, retry_after: float | None = None) -> None:
        super().__init__(failure)
        self.failure = failure
        self.retry_after = retry_after


class CdsXmatchClient:
    """A ``CrossmatchEngine`` backed by the CDS XMatch service (or anything speaking its API).

    Caching stored matches is the pipeline's business (``match.alert_matching``), not the
    engine's. ``sleep``, ``clock`` and ``jitter`` are injectable so that tests need not
    wait for real backoffs.
    """

    def __init__(
        self,
        settings: CdsClientSettings | None = None,
        *,
        session_factory: Callable[[], requests.Session] = requests.Session,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        jitter: random.Random | None = None,
    ) -> None:
        self.settings = settings or CdsClientSettings()
        self._session_factory = session_factory
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter or random.Random()
        self._idle_sessions: queue.SimpleQueue[requests.Session] = queue.SimpleQueue()

    def identity(self, catalog: CatalogSpec) -> EngineIdentity:
        """CDS has no build id: the catalog's release says which data answered."""
        return EngineIdentity("cds")

    def crossmatch(self, positions: pd.DataFrame, catalog: CatalogSpec) -> pd.DataFrame:
        """Matches of ``positions`` in ``catalog``, shaped as ``match.crossmatch_engine``
        documents."""
        validate_positions(positions)
        positions = positions.reset_index(drop=True)
        return self._match_remotely(positions, catalog)

    def _match_remotely(self, positions: pd.DataFrame, catalog: CatalogSpec) -> pd.DataFrame:
        chunks = list(upload_chunks(positions, self.settings.chunk_rows))
        answers = list(self._post_all(chunks, catalog))
        return _matches_from_answers(positions, catalog, answers, self.settings.url)

    def _post_all(self, chunks: list[UploadChunk], catalog: CatalogSpec) -> Iterator[_ChunkAnswer]:
        if self.settings.max_in_flight == 1 or len(chunks) <= 1:
            with self._lent_session() as session:
                for chunk in chunks:
                    yield self._post_chunk(session, chunk, len(chunks), catalog)
            return
        executor = ThreadPoolExecutor(
            max_workers=self.settings.max_in_flight, thread_name_prefix="cds-xmatch"
        )
        try:
            futures = [
                executor.submit(self._post_chunk_in_lent_session, chunk, len(chunks), catalog)
                for chunk in chunks
            ]
            for future in futures:
                yield future.result()
        finally:
            executor.shutdown(wait=True, cancel_futures=True)

    def _post_chunk_in_lent_session(
        self, chunk: UploadChunk, chunk_count: int, catalog: CatalogSpec
    ) -> _ChunkAnswer:
        with self._lent_session() as session:
            return self._post_chunk(session, chunk, chunk_count, catalog)

    @contextmanager
    def _lent_session(self) -> Iterator[requests.Session]:
        """A session kept for the client's life (its connections stay open between runs);
        one per concurrent caller, since a ``requests.Session`` is not thread-safe."""
        try:
            session = self._idle_sessions.get_nowait()
        except queue.Empty:
            session = self._session_factory()
        try:
            yield session
        except BaseException:
            session.close()  # whatever state a failed exchange left, it ends here
            raise
        self._idle_sessions.put(session)

    def close(self) -> None:
        """Close the kept sessions and their connections."""
        while True:
            try:
                self._idle_sessions.get_nowait().close()
            except queue.Empty:
                return

    def _post_chunk(
        self,
        session: requests.Session,
        chunk: UploadChunk,
        chunk_count: int,
        catalog: CatalogSpec,
    ) -> _ChunkAnswer:
        """One chunk, retried within its deadline; the same upload bytes on every attempt."""
        settings = self.settings
        fields = request_fields(catalog)
        started = self._clock()
        deadline = started + settings.deadline_seconds
        where = (
            f"CDS XMatch at {settings.url}, chunk {chunk.number + 1}/{chunk_count} "
            f"({chunk.row_count} rows) against {fields['cat2']}"
        )
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._attempt(
                    session,
                    chunk,
                    catalog,
                    fields=fields,
                    deadline=deadline,
                    where=where,
                    attempt=attempt,
                )
            except _RetryableAttemptError as failed:
                failure, retry_after = failed.failure, failed.retry_after
            elapsed = self._clock() - started
            if attempt >= settings.max_attempts:
                raise CdsUnavailableError(
                    f"{where}: failed {attempt} attempts in {elapsed:.1f} s (attempt limit "
                    f"{settings.max_attempts}); last failure: {failure}. CDS may be overloaded "
                    "or down: try again later, or use the local engine (--engine local)"
                )
            delay = self._backoff_seconds(attempt, retry_after)
            if self._clock() + delay >= deadline:
                raise CdsUnavailableError(
                    f"{where}: gave up after {attempt} attempts in {elapsed:.1f} s (deadline "
                    f"{settings.deadline_seconds:g} s per chunk); last failure: {failure}. CDS "
                    "may be overloaded or down: try again later, raise the deadline "
                    "(XMATCH_CDS_DEADLINE), or use "
                    "the local engine (--engine local)"
                )
            _LOG.warning(
                "%s: attempt %d failed (%s); retrying in %.2f s", where, attempt, failure, delay
            )
            self._sleep(delay)

    def _attempt(
        self,
        session: requests.Session,
        chunk: UploadChunk,
        catalog: CatalogSpec,
        *,
        fields: dict[str, str],
        deadline: float,
        where: str,
        attempt: int,
    ) -> _ChunkAnswer:
        """One request and its whole answer, within the deadline; ``_RetryableAttemptError`` if a
        new attempt may succeed, a ``CdsXmatchError`` if none can."""
        settings = self.settings
        remaining = max(deadline - self._clock(), 0.001)
        timeout = (
            min(settings.connect_timeout_seconds, remaining),
            min(settings.read_timeout_seconds, remaining),
        )
        try:
            response = session.post(
                settings.url,
                data=fields,
                files={"cat1": ("positions.csv", chunk.body, "text/csv")},
                timeout=timeout,
                stream=True,
            )
        except _RETRYABLE_TRANSPORT_ERRORS as error:
            raise _RetryableAttemptError(f"{type(error).__name__}: {error}") from error
        except requests.RequestException as error:
            raise CdsXmatchError(
                f"{where}: the request could not be sent ({type(error).__name__}: {error}); "
                "check the URL (--cds-url / CdsClientSettings.url)"
            ) from error
        with response:
            body = self._read_body(response, deadline)
        try:
            table = _interpret(response.status_code, body, where, attempt)
        except RetryableResponseError as error:
            raise _RetryableAttemptError(
                f"HTTP {response.status_code}: {error}", _retry_after_seconds(response.headers)
            ) from error
        return _ChunkAnswer(chunk, table, checked_source_rows(table, chunk, catalog, where))

    def _read_body(self, response: requests.Response, deadline: float) -> bytes:
        """The whole body, read as it arrives; cut (``_RetryableAttemptError``) once the deadline
        passes, so a body trickling in cannot hold the chunk beyond it."""
        started = self._clock()
        pieces: list[bytes] = []
        received = 0
        while True:
            if self._clock() >= deadline:
                raise _RetryableAttemptError(
                    f"HTTP {response.status_code}: the answer was still arriving when the "
                    f"chunk's deadline passed ({received} bytes in "
                    f"{self._clock() - started:.1f} s)"
                )
            try:
                piece = response.raw.read1(_READ_BYTES)
            except urllib3.exceptions.HTTPError as error:
                raise _RetryableAttemptError(
                    f"{type(error).__name__} after {received} bytes of the answer: {error}"
                ) from error
            if not piece:
                return b"".join(pieces)
            pieces.append(piece)
            received += len(piece)

    def _backoff_seconds(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter (half fixed, half random), at least Retry-After."""
        settings = self.settings
        ceiling = min(
            settings.backoff_max_seconds, settings.backoff_initial_seconds * 2.0 ** (attempt - 1)
        )
        delay = ceiling / 2 + self._jitter.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, settings.backoff_max_seconds))
        return delay


def request_fields(catalog: CatalogSpec) -> dict[str, str]:
    """The form fields of a CDS XMatch request for ``catalog`` (the upload goes as ``cat1``)."""
    fields = {
        "request": "xmatch",
        "cat2": cds_catalog_parameter(catalog.vizier_table or catalog.name),
        "colRA1": UPLOAD_RA_COLUMN,
        "colDec1": UPLOAD_DEC_COLUMN,
        "distMaxArcsec": repr(float(catalog.radius_arcsec)),
        "selection": catalog.selection,
        "RESPONSEFORMAT": "csv",
    }
    if catalog.columns:
        fields["cols2"] = ",".join(catalog.columns)
    return fields


def _interpret(status: int, body: bytes, where: str, attempt: int) -> pd.DataFrame:
    """The raw table of a good answer; raises what the answer means otherwise."""
    if status == 403:
        raise CdsBannedError(
            f"{where}: HTTP 403 on attempt {attempt}: CDS has banned this address, usually "
            "for too many parallel or repeated jobs. Not retried (retrying prolongs the ban): "
            "stop all clients on this address, wait (hours), and contact CDS "
            "(cds-question@unistra.fr) if it persists"
        )
    if is_busy_message(body):
        raise RetryableResponseError(f"CDS is busy: {body_preview(body, 200)!r}")
    service_message = query_status_message(body)
    if status == 400 or (service_message is not None and status < 500):
        message = service_message or body_preview(body)
        raise CdsRejectedError(
            f"{where}: CDS rejected the request (HTTP {status}): {message!r}. Not retried: "
            "fix the catalog name, columns or radius",
            message,
        )
    if status >= 500 or status in _RETRYABLE_STATUSES:
        raise RetryableResponseError(body_preview(body, 200) or "(empty body)")
    if status != 200:
        raise CdsXmatchError(
            f"{where}: unexpected HTTP {status}: {body_preview(body, 200)!r}; check the URL"
        )
    if is_html_page(body):
        raise RetryableResponseError(
            f"an HTML page instead of a CSV table: {body_preview(body, 200)!r}"
        )
    return read_raw_table(body)


def _retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: ignored, the backoff still applies


def _matches_from_answers(
    positions: pd.DataFrame, catalog: CatalogSpec, answers: list[_ChunkAnswer], url: str
) -> pd.DataFrame:
    """The engine-contract matches of every chunk, in input order, typed once for all chunks."""
    source_rows: list[np.ndarray] = []
    tables: list[pd.DataFrame] = []
    for answer in answers:
        source_rows.append(answer.source_rows)
        tables.append(answer.table)
    if tables:
        raw = pd.concat(tables, ignore_index=True)
        rows = np.concatenate(source_rows)
    else:
        names = [ANGULAR_DISTANCE_COLUMN, UPLOAD_INDEX_COLUMN, *UPLOAD_COLUMNS, *catalog.columns]
        raw = pd.DataFrame({name: pd.array([], dtype="string") for name in names})
        rows = np.empty(0, dtype=np.int64)
    columns = _catalog_columns(raw, catalog, url)
    try:
        typed = type_raw_table(raw[[ANGULAR_DISTANCE_COLUMN, *columns]])
    except RetryableResponseError as error:
        raise CdsResponseError(f"CDS XMatch at {url}: unusable answer: {error}") from error
    ids = positions["id"].iloc[rows].reset_index(drop=True)
    matches = pd.concat([ids.rename("id"), typed.reset_index(drop=True)], axis=1)
    order = np.lexsort((typed[ANGULAR_DISTANCE_COLUMN].to_numpy(), rows))
    return matches.iloc[order].reset_index(drop=True)


def _catalog_columns(raw: pd.DataFrame, catalog: CatalogSpec, url: str) -> list[str]:
    """The catalog columns to return: the spec's, or every catalog column if it names none."""
    internal = {ANGULAR_DISTANCE_COLUMN, UPLOAD_INDEX_COLUMN, *UPLOAD_COLUMNS}
    if not catalog.columns:
        return [column for column in raw.columns if column not in internal]
    missing = [column for column in catalog.columns if column not in raw.columns]
    if missing:
        raise CdsResponseError(
            f"CDS XMatch at {url}: the answer lacks requested columns {missing} for "
            f"catalog {catalog.name!r}; check the column names (they are VizieR's)"
        )
    return list(catalog.columns)
