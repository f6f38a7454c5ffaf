"""A Kafka broker or PostgreSQL server of one test module, to stop and start at will.

Each is started by the devstack's own server functions in a folder and on ports of its
own, so stopping it never disturbs the shared devstack other tests (and other checkouts)
use. :class:`RestartAt` is a run's stage hook that stops the service at a named stage and
starts it again in the background: the run goes on against a service that is down, then
coming back, as it would in production.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from threading import Thread

from xmatch_pipeline.devtools.devstack import DevstackSettings
from xmatch_pipeline.devtools.devstack.kafka_server import (
    KafkaPaths,
    start_kafka,
    stop_kafka,
    wait_until_kafka_ready,
)
from xmatch_pipeline.devtools.devstack.postgres_server import (
    start_postgres,
    stop_postgres,
    wait_until_postgres_ready,
)
from xmatch_pipeline.devtools.devstack.stack import prepare_devstack_directory
from xmatch_pipeline.microbatch.runner import STAGES


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class OwnService:
    """One server of the test's own: how to stop it, start it and wait until it answers."""

    name: str
    settings: DevstackSettings
    stop: Callable[[DevstackSettings], bool]
    start: Callable[[DevstackSettings], None]
    wait_until_ready: Callable[[DevstackSettings], None]
    restarts: list[float] = field(default_factory=list)
    """Seconds each restart took, from the stop to the service answering again."""

    def start_and_wait(self) -> None:
        self.start(self.settings)
        self.wait_until_ready(self.settings)


@contextmanager
def _own_folder(prefix: str) -> Iterator[Path]:
    # Not under pytest's private tmp folder: as root PostgreSQL runs as the 'postgres' account.
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        prepare_devstack_directory(folder)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def own_postgres(devstack: DevstackSettings) -> Iterator[OwnService]:
    """A PostgreSQL server of the caller's alone, removed afterwards."""
    with _own_folder("xmatch-own-postgres-") as folder:
        settings = dataclasses.replace(devstack, devstack_dir=folder, postgres_port=free_port())
        service = OwnService(
            "PostgreSQL", settings, stop_postgres, start_postgres, wait_until_postgres_ready
        )
        try:
            service.start_and_wait()
            yield service
        finally:
            stop_postgres(settings)


@contextmanager
def own_kafka(devstack: DevstackSettings) -> Iterator[OwnService]:
    """A single-node Kafka broker of the caller's alone (the devstack's jars), removed after."""
    with _own_folder("xmatch-own-kafka-") as folder:
        settings = dataclasses.replace(
            devstack,
            devstack_dir=folder,
            kafka_port=free_port(),
            kafka_controller_port=free_port(),
            kafka_sasl_port=free_port(),  # every listener apart from the shared devstack's
        )
        # The devstack's jars, already fetched: no second Maven download.
        paths = KafkaPaths(folder)
        paths.root.mkdir(parents=True)
        paths.libs.symlink_to(KafkaPaths(devstack.devstack_dir).libs, target_is_directory=True)
        service = OwnService("Kafka", settings, stop_kafka, start_kafka, wait_until_kafka_ready)
        try:
            service.start_and_wait()
            yield service
        finally:
            stop_kafka(settings)


@dataclass(frozen=True)
class Restart:
    """Where a run loses the service: at the ``occurrence``-th pass of ``stage``.

    ``in_background``: the run goes on at once against a service that is down, then
    starting; otherwise the hook waits until the service is back (the run then meets a
    restarted server: dead connections, sessions and locks gone). The service is started
    again ``down_seconds`` after it stopped.
    """

    stage: str
    occurrence: int = 1
    in_background: bool = True
    down_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; choose one of {STAGES}")

    def __str__(self) -> str:
        how = "in the background" if self.in_background else "before the run goes on"
        return f"{self.stage} #{self.occurrence}, back {how} after {self.down_seconds:g} s"


class RestartAt:
    """A stage hook: stop the service where ``restart`` says and start it again; call
    :meth:`wait_until_back` before checking what the run left behind."""

    def __init__(self, service: OwnService, restart: Restart) -> None:
        self.service = service
        self.restart = restart
        self.seen = 0
        #: When the service was down (``time.monotonic()``), once the hook has fired.
        self.stopped_at: float | None = None
        self._thread: Thread | None = None
        self._failure: BaseException | None = None

    @property
    def fired(self) -> bool:
        return self._thread is not None

    def __call__(self, stage: str) -> None:
        if stage != self.restart.stage or self.fired:
            return
        self.seen += 1
        if self.seen < self.restart.occurrence:
            return
        stopping_at = time.monotonic()
        if not self.service.stop(self.service.settings):
            raise AssertionError(f"{self.service.name} was not running at {stage}")
        self.stopped_at = time.monotonic()
        self._thread = Thread(
            target=self._start_again, args=(stopping_at,), name=f"restart-{self.service.name}"
        )
        self._thread.start()
        if not self.restart.in_background:
            self.wait_until_back()

    def _start_again(self, stopping_at: float) -> None:
        try:
            time.sleep(self.restart.down_seconds)
            self.service.start_and_wait()
            self.service.restarts.append(time.monotonic() - stopping_at)
        except BaseException as error:  # re-raised by wait_until_back in the test's thread
            self._failure = error

    def is_back(self) -> bool:
        """Whether the restarted service answers again."""
        return (
            bool(self.service.restarts) and self._thread is not None and not self._thread.is_alive()
        )

    def wait_until_back(self) -> None:
        """Block until the restarted service answers; raise what stopped it from starting."""
        if self._thread is None:
            raise AssertionError(f"the run never reached {self.restart}")
        self._thread.join()
        if self._failure is not None:
            raise self._failure
