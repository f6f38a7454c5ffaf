"""``run_failure_alerts``: a real failed run is logged and sent, with its range, reason and
attempt, to a real Kafka topic and to a webhook (a local HTTP server)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from dagster import DagsterEventType, DagsterInstance, build_run_status_sensor_context

from xmatch_pipeline.failure_alerts import RunFailureAlert, send_to_webhook
from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.microbatch.planning import PlannedRun
from xmatch_pipeline.orchestration.failure_sensor import report_failure
from xmatch_pipeline.orchestration.sensors import run_request
from xmatch_pipeline_tests.pipeline_fixtures import (
    SmallStream,
    execute_request,
    pipeline_environment,
    produce_values,
    read_committed,
    small_stream,
    unique_group,
    xmatch_resource,
)

pytestmark = pytest.mark.timeout(120)


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, object]]]

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, object]]]]:
    received: list[dict[str, object]] = []
    handler = type("Hook", (_Hook,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/alerts", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def stream(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SmallStream:
    return small_stream(shared_data_dir, tmp_path_factory.mktemp("failure-alerts-catalog"))


@pytest.fixture
def environment(
    stream: SmallStream,
    kafka_bootstrap: str,
    fresh_database_url: str,
    new_topic: Callable[..., str],
    webhook: tuple[str, list[dict[str, object]]],
) -> dict[str, str]:
    """Settings with both failure sinks: a fresh Kafka topic and the local webhook."""
    return pipeline_environment(
        kafka_bootstrap=kafka_bootstrap,
        database_url=fresh_database_url,
        input_topic=new_topic("failure-in"),
        output_topic=new_topic("failure-out"),
        group_id=unique_group(),
        index_dir=stream.index_dir,
        XMATCH_FAILURE_TOPIC=new_topic("failure-alerts"),
        XMATCH_FAILURE_WEBHOOK_URL=webhook[0],
    )


def test_a_failed_run_is_sent_with_its_range_reason_and_attempt_to_kafka_and_a_webhook(
    stream: SmallStream,
    kafka_bootstrap: str,
    environment: dict[str, str],
    webhook: tuple[str, list[dict[str, object]]],
) -> None:
    received = webhook[1]
    xmatch = xmatch_resource(environment)
    alerts_topic = environment["XMATCH_FAILURE_TOPIC"]
    topic = environment["CONSUMER_TOPICS"]
    produce_values(kafka_bootstrap, topic, stream.messages[:6])
    instance = DagsterInstance.ephemeral()
    # A live range that does not start at the group's offset (0): the run fails, unrun.
    failing = OffsetRange(topic, 0, 2, 6)
    result = execute_request(xmatch, instance, run_request(PlannedRun(failing, 2, "test")))
    assert not result.success
    (failure_event,) = [
        event
        for event in instance.all_logs(result.run_id)
        if event.dagster_event is not None
        and event.dagster_event.event_type == DagsterEventType.RUN_FAILURE
    ]
    assert failure_event.dagster_event is not None
    context = build_run_status_sensor_context(
        sensor_name="run_failure_alerts",
        dagster_event=failure_event.dagster_event,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
    ).for_run_failure()

    alert = report_failure(context, xmatch)

    assert alert.offset_range == failing.key
    assert alert.attempt == 2
    assert alert.mode == "live"
    assert "check_offset_range" in alert.reason
    assert "group" in alert.reason
    assert received == [json.loads(alert.to_json())]
    assert received[0]["offset_range"] == f"{topic}/0/2-6"
    (message,) = read_committed(kafka_bootstrap, alerts_topic, 1)
    assert message.key == failing.key.encode()
    assert json.loads(message.value) == received[0]


@pytest.fixture
def trickling_webhook() -> Iterator[str]:
    """A hook that accepts the POST and answers 204, then sends a header a byte every 0.2 s
    for a minute: every socket read succeeds, so only a deadline on the whole exchange
    ends it."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=trickle, args=(connection,), daemon=True).start()

    def trickle(connection: socket.socket) -> None:
        with connection:
            connection.recv(65536)
            try:
                connection.sendall(b"HTTP/1.1 204 No Content\r\nX-Slow: ")
                for _ in range(300):
                    if stop.is_set():
                        return
                    connection.sendall(b"a")
                    time.sleep(0.2)
            except OSError:
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/alerts"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_a_webhook_that_answers_a_byte_at_a_time_is_given_up_at_the_deadline(
    trickling_webhook: str, caplog: pytest.LogCaptureFixture
) -> None:
    alert = RunFailureAlert("run-1", "xmatch_microbatch", "t/0/0-5", 1, "live", "boom")
    started = time.monotonic()

    delivered = send_to_webhook(alert, trickling_webhook, timeout_seconds=1.0, attempts=2)

    elapsed = time.monotonic() - started
    assert not delivered
    # Two attempts of at most 1 s each and one 0.5 s backoff; without the deadline each
    # attempt would wait the minute the header takes to arrive.
    assert elapsed < 10
    assert "no answer within 1 s" in caplog.text
