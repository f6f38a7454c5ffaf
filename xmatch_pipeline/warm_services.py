"""One ``PipelineServices`` per settings for the life of a process, fork-safe.

A long-lived worker executes many runs in one process; building the services per run
would start every run cold (a new database pool, new CDS sessions, an empty partition
cache, new Kafka clients). :func:`warm_services` hands every run of the process the same
services for the same settings. A few settings at most are kept (a worker has one; a test
session changes them from test to test): the least recently used beyond
``MAX_KEPT_SETTINGS`` are disposed, so their pools do not pile up connections.

Fork safety. Celery's prefork pool forks its pool processes, and a child must never use
its parent's sockets nor librdkafka clients (their threads do not survive a fork, and a
client destroyed in the child can hang waiting for them). So a forked child forgets the
services it inherited without closing or even releasing them (the references are kept
aside, untouched: closing a database connection from the child would end the parent's
session) and builds its own on first use. At exit, a process disposes only the services
it built itself.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Final

from xmatch_pipeline.services import PipelineServices
from xmatch_pipeline.settings import PipelineSettings

MAX_KEPT_SETTINGS: Final = 4


class _ProcessServices:
    """The kept services of this process (one instance, module-level)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kept: list[PipelineServices] = []  # least recently used first
        self.owner_pid = os.getpid()
        #: Services inherited through a fork: kept referenced so that nothing of them is
        #: closed or garbage-collected in the child.
        self.inherited: list[PipelineServices] = []

    def forget_if_forked(self) -> None:
        """In a forked child, set the parent's services aside (caller holds the lock)."""
        if os.getpid() != self.owner_pid:
            self.inherited.extend(self.kept)
            self.kept.clear()
            self.owner_pid = os.getpid()

    def after_fork_in_child(self) -> None:
        # The parent's lock may have been held by another thread at the fork: a new one.
        self.lock = threading.Lock()
        self.forget_if_forked()


_process = _ProcessServices()


def warm_services(settings: PipelineSettings) -> PipelineServices:
    """This process's services for ``settings``, built on first use and then kept."""
    with _process.lock:
        _process.forget_if_forked()
        kept = _process.kept
        for position, services in enumerate(kept):
            if services.settings == settings:
                kept.append(kept.pop(position))
                return services
        services = PipelineServices(settings)
        kept.append(services)
        evicted = kept[:-MAX_KEPT_SETTINGS]
        del kept[:-MAX_KEPT_SETTINGS]
    for old in evicted:
        old.dispose()
    return services


def kept_services() -> list[PipelineServices]:
    """The services this process keeps now, least recently used first."""
    with _process.lock:
        _process.forget_if_forked()
        return list(_process.kept)


def dispose_warm_services() -> None:
    """Close every client this process built (registered to run at exit)."""
    with _process.lock:
        if os.getpid() != _process.owner_pid:
            return
        disposing = list(_process.kept)
        _process.kept.clear()
    for services in disposing:
        services.dispose()


os.register_at_fork(after_in_child=_process.after_fork_in_child)
atexit.register(dispose_warm_services)
