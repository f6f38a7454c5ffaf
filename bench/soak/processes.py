"""Resident memory of the processes that run the pipeline, read from ``/proc``.

Which processes: every descendant of the given roots (the daemon, which starts the code
server, which starts a process per run; a Celery worker if one is started) and every
process in a root's session. Each is given a role from its command line, so a new kind of
process (another run launcher, a worker) shows under its own role rather than being
missed. Long-lived roles are what memory growth is judged on: a run process lives for
one run, so its memory says nothing about leaks over hours.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
#: (role, words any of which in the command line give it), checked in order.
#: The default run launcher starts each run as a ``multiprocessing`` child of the code
#: server, with ``tail -F`` and ``watch_orphans`` helpers capturing its logs.
ROLES = (
    ("run_worker", ("execute_run", "execute_step", "spawn_main", "watch_orphans", "tail -F")),
    ("celery_worker", ("celery", "cli.main worker", "xmatch-pipeline worker")),
    ("code_server", ("code-server", "api grpc", "resource_tracker")),
    ("daemon", ("dagster-daemon",)),
)
LONG_LIVED_ROLES = ("daemon", "code_server", "celery_worker")


@dataclass(frozen=True)
class ProcessMemory:
    pid: int
    role: str
    rss_bytes: int
    command: str


def role_of(command: str) -> str:
    """The role a command line plays (``other`` when none matches)."""
    for role, words in ROLES:
        if any(word in command for word in words):
            return role
    return "other"


def _stat(pid: int) -> tuple[int, int] | None:
    """``(parent pid, session id)``, or None if the process is gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[3])


def _rss_bytes(pid: int) -> int | None:
    try:
        status = (PROC / str(pid) / "status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0  # a zombie has no VmRSS line


def _command(pid: int) -> str:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def pipeline_processes(roots: Iterable[int]) -> list[ProcessMemory]:
    """Every live process under or beside the roots, with its role and RSS."""
    roots = set(roots)
    parents: dict[int, int] = {}
    sessions: dict[int, int] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                parents[int(entry.name)], sessions[int(entry.name)] = stat
    chosen: set[int] = set()
    for pid in parents:
        ancestor: int | None = pid
        while ancestor is not None and ancestor > 1:
            if ancestor in roots or sessions.get(ancestor) in roots:
                chosen.add(pid)
                break
            ancestor = parents.get(ancestor)
    found = []
    for pid in sorted(chosen):
        rss = _rss_bytes(pid)
        command = _command(pid)
        if rss is not None and command:
            found.append(ProcessMemory(pid, role_of(command), rss, command[:200]))
    return found


def stop_leftovers(roots: Iterable[int], grace_seconds: float = 10.0) -> list[int]:
    """SIGTERM, then SIGKILL, whatever still runs under or beside the roots once they are
    stopped: code servers the daemon started in process groups of their own outlive a
    signal to the daemon's group. Returns the pids found."""
    leftovers = [process.pid for process in pipeline_processes(roots)]
    for pid in leftovers:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and any(_stat(pid) is not None for pid in leftovers):
        time.sleep(0.2)
    for pid in leftovers:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return leftovers


def rss_by_role(processes: Iterable[ProcessMemory]) -> dict[str, int]:
    """Summed RSS per role."""
    totals: dict[str, int] = {}
    for process in processes:
        totals[process.role] = totals.get(process.role, 0) + process.rss_bytes
    return totals
