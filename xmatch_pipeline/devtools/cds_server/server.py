"""A local HTTP server speaking CDS XMatch's sync protocol over local catalog indexes.

It is how the CDS client is tested here (with switchable faults and a log of what was
uploaded) and how the pipeline runs offline. Endpoints:

- ``POST /xmatch/api/v1/sync`` (any path ending ``/sync``): the crossmatch, as CDS, in CSV
  or VOTable (what astroquery's ``XMatch.query`` asks for).
- ``GET /xmatch/api/v1/sync/tables?action=getVizieRTableNames`` and ``…&action=getColList``:
  the served tables and their columns (``table_actions``).
- ``POST /_faults`` with a JSON list (``[{"kind": "500", "times": 2}]``) replaces the fault
  queue; ``GET /_faults`` shows what is left; ``DELETE /_faults`` clears it.
- ``GET /_requests``: the request log (fields, upload size and SHA-256, fault, status);
  ``DELETE /_requests`` clears it.
- ``GET /_stats``: sync requests being answered now (``in_flight``) and the most ever
  answered at once (``peak_in_flight``), so a test can check a fleet's limit on
  parallel CDS jobs; ``DELETE /_stats`` resets the peak to the current count.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Lock, Thread
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import pandas as pd

from xmatch_pipeline.devtools.cds_server.catalogs import ServedCatalogs
from xmatch_pipeline.devtools.cds_server.faults import (
    ANSWER_CORRUPTIONS,
    SLOW_BODY_PIECE_BYTES,
    Fault,
    FaultQueue,
    corrupted_answer,
)
from xmatch_pipeline.devtools.cds_server.protocol import (
    FormData,
    ProtocolError,
    format_csv_answer,
    parse_form,
    parse_query,
    read_upload,
    rows_in_area,
    votable_error,
)
from xmatch_pipeline.devtools.cds_server.table_actions import answer_tables_action
from xmatch_pipeline.devtools.cds_server.votable_answer import format_votable_answer
from xmatch_pipeline.match.catalog_spec import CatalogSpec
from xmatch_pipeline.match.crossmatch_engine import CrossmatchError

SYNC_PATH = "/xmatch/api/v1/sync"
#: CDS refuses uploads above 100 MB.
MAX_BODY_BYTES = 110 * 1024 * 1024
GATEWAY_TIMEOUT_PAGE = (
    b"<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n"
    b"<center><h1>504 Gateway Time-out</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
TOO_MANY_JOBS = b"Too many jobs are being processed, try later!"

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordedRequest:
    """One sync request as received, for tests to check what the client sent."""

    number: int
    fields: dict[str, str]
    upload: bytes | None
    fault: str | None
    status: int | None

    @property
    def upload_sha256(self) -> str | None:
        return None if self.upload is None else hashlib.sha256(self.upload).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "fields": self.fields,
            "upload_bytes": None if self.upload is None else len(self.upload),
            "upload_sha256": self.upload_sha256,
            "fault": self.fault,
            "status": self.status,
        }


@dataclass(frozen=True)
class ConcurrencyStats:
    """Sync requests being answered now, and the most answered at once since the reset."""

    in_flight: int
    peak_in_flight: int

    def to_json(self) -> dict[str, int]:
        return {"in_flight": self.in_flight, "peak_in_flight": self.peak_in_flight}


class CdsXmatchServer:
    """The server; ``start()`` runs it in a background thread, ``stop()`` ends it.

    ``port=0`` picks a free port (see ``url``).
    """

    def __init__(
        self,
        catalogs: ServedCatalogs,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Iterable[Fault] = (),
    ) -> None:
        self.catalogs = catalogs
        self.faults = FaultQueue(faults)
        self._log: list[RecordedRequest] = []
        self._log_lock = Lock()
        self._in_flight = 0
        self._peak_in_flight = 0
        self._http = ThreadingHTTPServer((host, port), _handler_class(self))
        self._http.daemon_threads = True
        self._thread: Thread | None = None

    @property
    def url(self) -> str:
        """The sync endpoint, as a client's ``url`` setting."""
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}{SYNC_PATH}"

    @property
    def base_url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> CdsXmatchServer:
        self._thread = Thread(target=self._http.serve_forever, name="cds-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._http.serve_forever()

    def stop(self) -> None:
        # shutdown() waits for a serve loop to end, so only for the background thread's:
        # after serve_forever() in this thread has returned (or was interrupted) there is
        # no loop to wait for, and waiting could block the exit for ever.
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join(timeout=5)
        self._http.server_close()

    def __enter__(self) -> CdsXmatchServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def set_faults(self, faults: Iterable[Fault]) -> None:
        self.faults.replace(faults)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every sync request received so far, in arrival order."""
        with self._log_lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self._log_lock:
            self._log.clear()

    def stats(self) -> ConcurrencyStats:
        with self._log_lock:
            return ConcurrencyStats(self._in_flight, self._peak_in_flight)

    def reset_stats(self) -> None:
        """Forget the peak (requests still being answered keep counting)."""
        with self._log_lock:
            self._peak_in_flight = self._in_flight

    def _enter_sync(self) -> None:
        with self._log_lock:
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)

    def _leave_sync(self) -> None:
        with self._log_lock:
            self._in_flight -= 1

    def _record_arrival(
        self, fields: dict[str, str], upload: bytes | None, fault: str | None
    ) -> int:
        """Log a request as it arrives (so a client that gave up still sees it counted)."""
        with self._log_lock:
            number = len(self._log) + 1
            self._log.append(RecordedRequest(number, fields, upload, fault, None))
            return number

    def _record_status(self, number: int, status: int | None) -> None:
        with self._log_lock:
            for position, record in enumerate(self._log):
                if record.number == number:
                    self._log[position] = replace(record, status=status)

    def answer(self, fields: dict[str, str], files: dict[str, bytes]) -> tuple[int, bytes, str]:
        """Status, body and content type for a well-formed sync request."""
        try:
            query = parse_query(FormData(fields, files))
            catalog = self.catalogs.resolve(query.catalog)
            upload = read_upload(query)
            columns = query.columns if query.columns is not None else catalog.columns
            spec = CatalogSpec(
                name=catalog.name,
                columns=tuple(columns),
                radius_arcsec=query.radius_arcsec,
                selection=query.selection,
            )
            rows = rows_in_area(query, upload)
            positions = pd.DataFrame(
                {"id": rows, "ra": upload.ra_deg[rows], "dec": upload.dec_deg[rows]}
            )
            matches = catalog.crossmatch(positions, spec)
        except ProtocolError as error:
            return 400, votable_error(str(error)), "text/xml; charset=utf-8"
        except (CrossmatchError, ValueError, OSError) as error:
            _LOG.exception("crossmatch failed")
            return 500, votable_error(f"Internal error: {error}"), "text/xml; charset=utf-8"
        ordered = tuple(column for column in catalog.columns if column in spec.columns)
        if query.response_format == "votable":
            body = format_votable_answer(upload, matches, ordered)
            return 200, body, "application/x-votable+xml"
        return 200, format_csv_answer(upload, matches, ordered), "text/csv; charset=utf-8"

    def answer_tables(self, fields: dict[str, str]) -> tuple[int, bytes, str]:
        """Status, body and content type of a ``…/sync/tables`` action."""
        try:
            answer = answer_tables_action(self.catalogs, fields)
        except ProtocolError as error:
            return 400, votable_error(str(error)), "text/xml; charset=utf-8"
        return 200, answer.body, answer.content_type


def _handler_class(server: CdsXmatchServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        owner = server

    return Handler


class _Handler(BaseHTTPRequestHandler):
    owner: CdsXmatchServer
    _request_number: int | None = None
    server_version = "xmatch-pipeline-cds-server/1"

    def log_message(self, format: str, *args: Any) -> None:
        _LOG.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/_faults":
            self._send_json(200, self.owner.faults.pending())
        elif path == "/_requests":
            self._send_json(200, [record.to_json() for record in self.owner.requests])
        elif path == "/_stats":
            self._send_json(200, self.owner.stats().to_json())
        elif path.endswith("/sync"):
            self._sync(b"")
        elif path.endswith("/sync/tables"):
            self._tables(b"")
        else:
            self._send(404, b"not found\n", "text/plain")

    def do_DELETE(self) -> None:
        path = urlsplit(self.path).path
        if path == "/_faults":
            self.owner.set_faults([])
            self._send_json(200, [])
        elif path == "/_requests":
            self.owner.clear_requests()
            self._send_json(200, [])
        elif path == "/_stats":
            self.owner.reset_stats()
            self._send_json(200, self.owner.stats().to_json())
        else:
            self._send(404, b"not found\n", "text/plain")

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._send(413, votable_error("Upload larger than 100 MB"), "text/xml")
            return
        body = self.rfile.read(length)
        if path == "/_faults":
            self._set_faults(body)
        elif path.endswith("/sync"):
            self._sync(body)
        elif path.endswith("/sync/tables"):
            self._tables(body)
        else:
            self._send(404, b"not found\n", "text/plain")

    def _set_faults(self, body: bytes) -> None:
        try:
            documents = json.loads(body or b"[]")
            if not isinstance(documents, list):
                raise ValueError("expected a JSON list of faults")
            faults = [Fault.from_json(document) for document in documents]
        except (ValueError, KeyError, TypeError) as error:
            self._send_json(400, {"error": str(error)})
            return
        self.owner.set_faults(faults)
        self._send_json(200, self.owner.faults.pending())

    def _tables(self, body: bytes) -> None:
        try:
            form = parse_form(self.headers.get("Content-Type", ""), body, urlsplit(self.path).query)
        except ProtocolError as error:
            self._send(400, votable_error(str(error)), "text/xml; charset=utf-8")
            return
        self._send(*self.owner.answer_tables(form.fields))

    def _sync(self, body: bytes) -> None:
        self.owner._enter_sync()
        try:
            self._answer_sync(body)
        finally:
            self.owner._leave_sync()

    def _answer_sync(self, body: bytes) -> None:
        try:
            form = parse_form(self.headers.get("Content-Type", ""), body, urlsplit(self.path).query)
        except ProtocolError as error:
            self._request_number = self.owner._record_arrival({}, None, None)
            self._send(400, votable_error(str(error)), "text/xml; charset=utf-8")
            return
        fault = self.owner.faults.take()
        number = self.owner._record_arrival(
            form.fields, form.files.get("cat1"), None if fault is None else fault.kind
        )
        self._request_number = number
        if fault is not None and fault.kind != "delay":
            self._inject(fault, form)
            return
        if fault is not None:
            time.sleep(fault.seconds)
        status, answer, content_type = self.owner.answer(form.fields, form.files)
        self._send(status, answer, content_type)

    def _inject(self, fault: Fault, form: FormData) -> int | None:
        """Answer as the fault says; the status sent, None if none was."""
        kind = fault.kind
        if kind in ("500", "503", "504", "403"):
            status = int(kind)
            self._send(status, f"{status} {self.responses[status][0]}\n".encode(), "text/plain")
            return status
        if kind == "400":
            self._send(400, votable_error(fault.message), "text/xml; charset=utf-8")
            return 400
        if kind == "html200":
            self._send(200, GATEWAY_TIMEOUT_PAGE, "text/html")
            return 200
        if kind == "too_many_jobs":
            self._send(200, TOO_MANY_JOBS, "text/plain")
            return 200
        if kind == "drop":
            self.close_connection = True
            return None
        if kind in ANSWER_CORRUPTIONS:
            status, answer, content_type = self.owner.answer(form.fields, form.files)
            if status == 200:
                radius = float(form.fields.get("distMaxArcsec", "0"))
                answer = corrupted_answer(kind, answer, radius)
            self._send(status, answer, content_type)
            return status
        if kind == "slow_body":
            return self._send_slowly(fault, form)
        return self._send_cut_answer(fault, form)

    def _send_slowly(self, fault: Fault, form: FormData) -> int:
        """The real answer, a few bytes at a time ``fault.seconds`` apart, until it is all
        sent or the client hangs up."""
        status, answer, content_type = self.owner.answer(form.fields, form.files)
        self._note_status(status)
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            for start in range(0, len(answer), SLOW_BODY_PIECE_BYTES):
                self.wfile.write(answer[start : start + SLOW_BODY_PIECE_BYTES])
                self.wfile.flush()
                time.sleep(fault.seconds)
        except (BrokenPipeError, ConnectionResetError):
            _LOG.debug("client went away before the slow answer was sent")
        return status

    def _send_cut_answer(self, fault: Fault, form: FormData) -> int:
        """The real answer cut inside a row: with the cut length (``truncated``), or
        promising the whole answer and closing the connection halfway (``cut_connection``)."""
        status, answer, content_type = self.owner.answer(form.fields, form.files)
        if status != 200:
            self._send(status, answer, content_type)
            return status
        cut = answer[: len(answer) // 2].rstrip(b"\n")
        if fault.kind == "truncated":
            self._send(200, cut, content_type)
            return 200
        self.close_connection = True
        self._note_status(200)
        try:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(cut)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            _LOG.debug("client went away before the answer was sent")
        return 200

    def _send_json(self, status: int, document: object) -> None:
        self._send(status, json.dumps(document).encode() + b"\n", "application/json")

    def _note_status(self, status: int) -> None:
        """Log the status of a sync request before answering, so the log is never behind."""
        if self._request_number is not None:
            self.owner._record_status(self._request_number, status)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self._note_status(status)
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            _LOG.debug("client went away before the answer was sent")
