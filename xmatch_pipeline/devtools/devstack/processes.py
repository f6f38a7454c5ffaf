"""Background service processes: launch detached, recognise our own by pid, stop cleanly."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from xmatch_pipeline.devtools.devstack.errors import PrerequisiteMissingError

STOP_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class RunAs:
    """The unprivileged account a service runs under (PostgreSQL refuses to run as root)."""

    uid: int
    gid: int


def process_command_line(pid: int) -> str | None:
    """The command line of a live (non-zombie) process, or None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
        # The state follows the parenthesised command name, which may itself contain spaces.
        if status[status.rindex(")") + 2] in "ZX":
            return None
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError, IndexError):
        return None


def read_pid(pid_file: Path) -> int | None:
    """The pid recorded in a pid file (first line, as PostgreSQL also writes it)."""
    try:
        first_line = pid_file.read_text().splitlines()[0]
        return int(first_line.strip())
    except (OSError, ValueError, IndexError):
        return None


def running_pid(pid_file: Path, command_marker: str) -> int | None:
    """The pid from ``pid_file`` if that process still runs and is ours (its command line
    contains ``command_marker``), so a recycled pid is never mistaken for the service."""
    pid = read_pid(pid_file)
    if pid is None:
        return None
    command_line = process_command_line(pid)
    if command_line is None or command_marker not in command_line:
        return None
    return pid


def launch_detached(
    command: Sequence[str],
    *,
    log_file: Path,
    working_dir: Path,
    pid_file: Path | None = None,
    run_as: RunAs | None = None,
    environment: dict[str, str] | None = None,
) -> None:
    """Start ``command`` in its own session, detached from the caller (a double fork via
    ``setsid --fork``), so it outlives the CLI or test run and is never left as a zombie child
    of a long-lived process. Its pid goes to ``pid_file`` when given (PostgreSQL writes its
    own)."""
    setsid = shutil.which("setsid")
    if setsid is None:
        raise PrerequisiteMissingError(
            "the 'setsid' command is missing; install util-linux (apt-get install util-linux)."
        )
    launcher: list[str] = [setsid, "--fork"]
    if pid_file is not None:
        pid_file.unlink(missing_ok=True)
        # The shell records its own pid, then becomes the service with exec: the pid stays.
        launcher += ["sh", "-c", 'echo $$ > "$0"; exec "$@"', str(pid_file)]
    with log_file.open("ab") as log:
        subprocess.run(
            [*launcher, *command],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=working_dir,
            env=environment,
            user=run_as.uid if run_as else None,
            group=run_as.gid if run_as else None,
            extra_groups=[] if run_as else None,
            check=True,
            timeout=30,
        )


def wait_for_pid_file(
    pid_file: Path, command_marker: str, timeout_seconds: float = 10.0
) -> int | None:
    """The service's pid once its launcher wrote it, None if it never shows up running."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        pid = running_pid(pid_file, command_marker)
        if pid is not None:
            return pid
        time.sleep(0.05)
    return None


def stop_process(
    pid: int, stop_signal: signal.Signals, grace_seconds: float = STOP_GRACE_SECONDS
) -> bool:
    """Ask a process to stop, wait up to ``grace_seconds``, then kill it.

    Returns True when it stopped on the polite signal, False when it had to be killed.
    """
    try:
        os.kill(pid, stop_signal)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        if process_command_line(pid) is None:
            return True
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    kill_deadline = time.monotonic() + 10
    while time.monotonic() < kill_deadline and process_command_line(pid) is not None:
        time.sleep(0.1)
    return False
