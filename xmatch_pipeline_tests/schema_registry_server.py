"""A local HTTP server speaking the part of Confluent's Schema Registry REST API that the
pipeline uses, for tests: no registry (Karapace or Confluent's) installs from the
project's registries here, so this is the closest real thing, and the client under test
is confluent-kafka's own ``SchemaRegistryClient``.

- ``GET /schemas/ids/{id}``: ``{"schema": …}``, or 404 with error code 40403;
- ``POST /subjects/{subject}/versions`` with ``{"schema": …}``: ``{"id": …}``, the same id
  for a schema already registered (by exact text), a new one otherwise;
- ``silent`` makes every request hang without an answer (a registry that does not
  answer); ``requests`` counts what arrived.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

FIRST_REGISTERED_ID = 5_000


class SchemaRegistryServer:
    def __init__(self, schemas: dict[int, str] | None = None) -> None:
        self.schemas: dict[int, str] = dict(schemas or {})
        self.subjects: dict[str, list[int]] = {}
        self.requests: list[str] = []
        self.silent = False
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> SchemaRegistryServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.silent = False
        self._server.shutdown()
        self._server.server_close()

    def register(self, subject: str, schema: str) -> int:
        with self._lock:
            for known, text in self.schemas.items():
                if text == schema:
                    found = known
                    break
            else:
                found = max([FIRST_REGISTERED_ID - 1, *self.schemas]) + 1
                self.schemas[found] = schema
            versions = self.subjects.setdefault(subject, [])
            if found not in versions:
                versions.append(found)
            return found


def _handler(registry: SchemaRegistryServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            encoded = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(encoded)))
            self.end_headers()
            self.wfile.write(encoded)

        def _hang_if_silent(self) -> bool:
            if not registry.silent:
                return False
            while registry.silent:
                time.sleep(0.05)
            return True

        def do_GET(self) -> None:
            registry.requests.append(f"GET {self.path}")
            if self._hang_if_silent():
                return
            found = re.fullmatch(r"/schemas/ids/(\d+)(\?.*)?", self.path)
            if found is None:
                self._answer(404, {"error_code": 404, "message": "HTTP 404 Not Found"})
                return
            schema = registry.schemas.get(int(found.group(1)))
            if schema is None:
                self._answer(404, {"error_code": 40403, "message": "Schema not found"})
                return
            self._answer(200, {"schema": schema})

        def do_POST(self) -> None:
            registry.requests.append(f"POST {self.path}")
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            if self._hang_if_silent():
                return
            found = re.fullmatch(r"/subjects/([^/]+)/versions(\?.*)?", self.path)
            if found is None or "schema" not in body:
                self._answer(404, {"error_code": 404, "message": "HTTP 404 Not Found"})
                return
            self._answer(200, {"id": registry.register(found.group(1), body["schema"])})

    return Handler
