"""The services together (Kafka, PostgreSQL, Redis): start what is missing (once, even with
concurrent callers), stop, and report whether they answer."""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from xmatch_pipeline.devtools.devstack.errors import DevstackError, PrerequisiteMissingError
from xmatch_pipeline.devtools.devstack.kafka_server import (
    kafka_pid,
    preflight_kafka,
    start_kafka,
    stop_kafka,
    wait_until_kafka_ready,
)
from xmatch_pipeline.devtools.devstack.postgres_server import (
    postgres_pid,
    preflight_postgres,
    start_postgres,
    stop_postgres,
    wait_until_postgres_ready,
)
from xmatch_pipeline.devtools.devstack.probes import kafka_answers, postgres_answers
from xmatch_pipeline.devtools.devstack.redis_server import (
    preflight_redis,
    redis_answers,
    redis_pid,
    start_redis,
    stop_redis,
    wait_until_redis_ready,
)
from xmatch_pipeline.devtools.devstack.settings import (
    DEVSTACK_DIR_ENV,
    DevstackSettings,
    devstack_settings,
)

LOCK_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True)
class ServiceHealth:
    """Whether each service answers on the network right now."""

    kafka: bool
    postgres: bool
    redis: bool

    @property
    def all_up(self) -> bool:
        return self.kafka and self.postgres and self.redis


def check_health(settings: DevstackSettings) -> ServiceHealth:
    """Ask each service a cheap question (metadata; ``SELECT 1`` on the pipeline database;
    PING)."""
    return ServiceHealth(
        kafka=kafka_answers(settings.kafka_bootstrap_servers),
        postgres=postgres_answers(settings.database_url),
        redis=redis_answers(settings.celery_broker_url),
    )


def prepare_devstack_directory(devstack_dir: Path) -> None:
    """Create the folder, or say plainly that it cannot be written (before any service starts)."""
    try:
        devstack_dir.mkdir(parents=True, exist_ok=True)
        # A unique name: parallel callers must not remove each other's probe.
        with tempfile.NamedTemporaryFile(dir=devstack_dir, prefix=".write-check-"):
            pass
    except OSError as error:
        raise PrerequisiteMissingError(
            f"the devstack folder {devstack_dir} is not writable ({error.strerror}); make it "
            f"writable or choose another folder with {DEVSTACK_DIR_ENV}=/some/writable/folder."
        ) from None
    # As root, PostgreSQL runs as the 'postgres' account, which must be able to enter it.
    mode = devstack_dir.stat().st_mode
    if os.geteuid() == 0 and mode & 0o055 != 0o055:
        devstack_dir.chmod(mode | 0o755)


@contextmanager
def _exclusive(devstack_dir: Path) -> Iterator[None]:
    """One starter at a time: parallel test sessions may all call ``up`` at once."""
    with (devstack_dir / "devstack.lock").open("w") as lock_file:
        deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DevstackError(
                        f"another 'devstack up' has held {lock_file.name} for over "
                        f"{LOCK_TIMEOUT_SECONDS:.0f} s; is one stuck? (see its process list)"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _own_services_running(settings: DevstackSettings) -> bool:
    """The processes are this devstack's own, not something else answering on its ports."""
    return (
        kafka_pid(settings) is not None
        and postgres_pid(settings) is not None
        and redis_pid(settings) is not None
    )


def ensure_devstack_running(settings: DevstackSettings | None = None) -> DevstackSettings:
    """Start whichever service is not running, wait until both answer, return the settings.

    Idempotent and safe to call from parallel processes. Raises a ``DevstackError`` whose
    message says what is missing or which log file to read.
    """
    settings = settings or devstack_settings()
    if _own_services_running(settings) and check_health(settings).all_up:
        return settings
    prepare_devstack_directory(settings.devstack_dir)
    with _exclusive(settings.devstack_dir):
        # Every check first, so a missing prerequisite never leaves one service half started.
        preflight_postgres(settings)
        preflight_kafka(settings)
        preflight_redis(settings)
        # Start all before waiting on any: the JVM, PostgreSQL and Redis boot in parallel.
        start_postgres(settings)
        start_kafka(settings)
        start_redis(settings)
        wait_until_postgres_ready(settings)
        wait_until_redis_ready(settings)
        wait_until_kafka_ready(settings)
    return settings


def stop_devstack(settings: DevstackSettings | None = None) -> dict[str, bool]:
    """Stop the services; for each, whether it was running."""
    settings = settings or devstack_settings()
    if not settings.devstack_dir.is_dir():
        return {"kafka": False, "postgres": False, "redis": False}
    with _exclusive(settings.devstack_dir):
        # Kafka first: clients of both often write to the database on Kafka's behalf.
        return {
            "kafka": stop_kafka(settings),
            "postgres": stop_postgres(settings),
            "redis": stop_redis(settings),
        }
