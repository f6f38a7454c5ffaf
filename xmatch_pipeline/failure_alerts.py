"""Telling operators that a run failed: which range, why, which attempt, as one JSON
message to a Kafka topic (``XMATCH_FAILURE_TOPIC``) and/or a webhook
(``XMATCH_FAILURE_WEBHOOK_URL``, an HTTP POST), besides the log.

Each delivery is bounded (the whole exchange within ``timeout_seconds`` per attempt, a few
attempts with backoff) and never raises: an alert that cannot be delivered is logged with
what failed, and the failure it reports is still in Dagster. A webhook's POST runs in a
thread of its own and is abandoned at its deadline, since requests' timeouts bound each
socket read, not the exchange: a hook answering a byte at a time would otherwise hold the
run-failure sensor (and so the daemon's next failure alerts) for as long as it likes.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import asdict, dataclass

import requests
from confluent_kafka import Producer

from xmatch_pipeline.kafka.client_config import KafkaClientConfig

logger = logging.getLogger(__name__)

DELIVERY_TIMEOUT_SECONDS = 10.0
WEBHOOK_ATTEMPTS = 3
WEBHOOK_BACKOFF_SECONDS = 0.5


@dataclass(frozen=True)
class RunFailureAlert:
    run_id: str
    job: str
    #: The range's partition key (``topic/partition/start-end``), None for a multi-range run.
    offset_range: str | None
    attempt: int | None
    mode: str
    reason: str

    def to_json(self) -> bytes:
        return json.dumps({"event": "xmatch_run_failed", **asdict(self)}, sort_keys=True).encode()

    def __str__(self) -> str:
        attempt = f" attempt {self.attempt}" if self.attempt is not None else ""
        return (
            f"{self.job} run {self.run_id} failed on {self.offset_range or 'its ranges'}"
            f"{attempt} ({self.mode}): {self.reason}"
        )


def send_to_kafka(
    alert: RunFailureAlert,
    config: KafkaClientConfig,
    topic: str,
    timeout_seconds: float = DELIVERY_TIMEOUT_SECONDS,
) -> bool:
    """Produce the alert (key: the range) and wait for its delivery, within the timeout."""
    producer = Producer(
        config.as_dict(
            {
                "client.id": "xmatch-failure-alerts",
                "message.timeout.ms": int(timeout_seconds * 1000),
            }
        )
    )
    failures: list[str] = []
    producer.produce(
        topic,
        alert.to_json(),
        key=(alert.offset_range or alert.run_id).encode(),
        on_delivery=lambda error, _message: failures.append(str(error)) if error else None,
    )
    remaining = producer.flush(timeout_seconds)
    if remaining or failures:
        logger.error(
            "failure alert for run %s not delivered to Kafka topic %s: %s; check the topic "
            "and XMATCH_FAILURE_TOPIC",
            alert.run_id,
            topic,
            failures or f"still queued after {timeout_seconds} s",
        )
        return False
    return True


def send_to_webhook(
    alert: RunFailureAlert,
    url: str,
    timeout_seconds: float = DELIVERY_TIMEOUT_SECONDS,
    attempts: int = WEBHOOK_ATTEMPTS,
) -> bool:
    """POST the alert as JSON; retried with backoff on a connection error or a 5xx."""
    problem = ""
    for attempt in range(1, attempts + 1):
        try:
            status = _post_within(url, alert.to_json(), timeout_seconds)
        except FutureTimeoutError:
            problem = f"no answer within {timeout_seconds:g} s"
        except requests.RequestException as error:
            problem = f"{type(error).__name__}: {error}"
        else:
            if status < 300:
                return True
            problem = f"HTTP {status}"
            if status < 500:
                break  # the hook refuses the message itself: another attempt changes nothing
        if attempt < attempts:
            time.sleep(WEBHOOK_BACKOFF_SECONDS * 2 ** (attempt - 1))
    logger.error(
        "failure alert for run %s not delivered to the webhook %s: %s; check "
        "XMATCH_FAILURE_WEBHOOK_URL and the service behind it",
        alert.run_id,
        url.split("?", maxsplit=1)[0],
        problem,
    )
    return False


def _post_within(url: str, body: bytes, timeout_seconds: float) -> int:
    """The POST's status code, the whole exchange within ``timeout_seconds``
    (``FutureTimeoutError`` past it; the abandoned thread ends at its socket timeout)."""

    def post() -> int:
        with requests.post(
            url,
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=(timeout_seconds, timeout_seconds),
            stream=True,  # the body is not needed: only the status is
        ) as response:
            return response.status_code

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xmatch-failure-webhook")
    try:
        return pool.submit(post).result(timeout=timeout_seconds)
    finally:
        pool.shutdown(wait=False)
