"""The devstack's PostgreSQL server, from Debian's server binaries (they include contrib)."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

from xmatch_pipeline.devtools.devstack.errors import PrerequisiteMissingError, ServiceStartError
from xmatch_pipeline.devtools.devstack.ports import ensure_port_free
from xmatch_pipeline.devtools.devstack.processes import (
    RunAs,
    launch_detached,
    running_pid,
    stop_process,
    wait_for_pid_file,
)
from xmatch_pipeline.devtools.devstack.settings import POSTGRES_PORT_ENV, DevstackSettings

POSTGRES_BIN_ENV = "XMATCH_DEVSTACK_POSTGRES_BIN"
SERVICE_ACCOUNT = "postgres"
START_TIMEOUT_SECONDS = 60.0
INSTALL_HINT = "install them with 'apt-get install postgresql postgresql-contrib'"


class PostgresPaths:
    """Files of the server inside the devstack folder."""

    def __init__(self, devstack_dir: Path) -> None:
        self.root = devstack_dir / "postgres"
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.pid = self.data / "postmaster.pid"
        self.password_file = self.root / "initdb-password"


def find_postgres_bin() -> Path:
    """The folder with ``initdb`` and ``postgres``: ``$XMATCH_DEVSTACK_POSTGRES_BIN``, else the
    newest ``/usr/lib/postgresql/<major>/bin``, else the one on PATH."""
    configured = os.environ.get(POSTGRES_BIN_ENV)
    candidates: list[Path] = []
    if configured:
        candidates.append(Path(configured))
    else:
        debian = sorted(
            Path("/usr/lib/postgresql").glob("*/bin"),
            key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
            reverse=True,
        )
        candidates.extend(debian)
        on_path = shutil.which("postgres")
        if on_path:
            candidates.append(Path(on_path).parent)
    for folder in candidates:
        if all(os.access(folder / tool, os.X_OK) for tool in ("postgres", "initdb")):
            return folder
    where = (
        f"in {configured} ({POSTGRES_BIN_ENV})" if configured else "in /usr/lib/postgresql/*/bin"
    )
    raise PrerequisiteMissingError(
        f"the PostgreSQL server binaries (postgres, initdb) were not found {where}; {INSTALL_HINT}."
    )


def _service_account() -> RunAs | None:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` account."""
    if os.geteuid() != 0:
        return None
    try:
        account = pwd.getpwnam(SERVICE_ACCOUNT)
    except KeyError:
        raise PrerequisiteMissingError(
            "running as root, the devstack starts PostgreSQL as the unprivileged 'postgres' "
            f"account, which does not exist; {INSTALL_HINT} (it creates the account), or run "
            "as a non-root user."
        ) from None
    return RunAs(uid=account.pw_uid, gid=account.pw_gid)


def _first_unsearchable_ancestor(folder: Path, run_as: RunAs) -> Path | None:
    """The first existing folder on the way to ``folder`` that the service account may not
    enter (folders still to be created are made enterable by the devstack itself)."""
    for ancestor in reversed(folder.parents):
        if not ancestor.exists():
            break
        mode = ancestor.stat()
        if mode.st_uid == run_as.uid:
            allowed = bool(mode.st_mode & stat.S_IXUSR)
        elif mode.st_gid == run_as.gid:
            allowed = bool(mode.st_mode & stat.S_IXGRP)
        else:
            allowed = bool(mode.st_mode & stat.S_IXOTH)
        if not allowed:
            return ancestor
    return None


def _check_account_can_reach(paths: PostgresPaths, run_as: RunAs | None) -> None:
    if run_as is None:
        return
    blocked = _first_unsearchable_ancestor(paths.data, run_as)
    if blocked is not None:
        raise PrerequisiteMissingError(
            f"PostgreSQL runs as the 'postgres' account, which cannot enter {blocked} "
            f"(mode {stat.filemode(blocked.stat().st_mode)}) to reach {paths.data}. Put the "
            "devstack elsewhere, e.g. 'export XMATCH_DEVSTACK_DIR=/var/tmp/xmatch-devstack', or "
            f"allow entering it with 'chmod o+x {blocked}'."
        )


def _chown_tree(folder: Path, run_as: RunAs | None) -> None:
    if run_as is None:
        return
    os.chown(folder, run_as.uid, run_as.gid)
    for path in folder.rglob("*"):
        os.chown(path, run_as.uid, run_as.gid, follow_symlinks=False)


def _run_as_account(
    command: list[str], run_as: RunAs | None, timeout_seconds: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout_seconds,
        check=False,
        user=run_as.uid if run_as else None,
        group=run_as.gid if run_as else None,
        extra_groups=[] if run_as else None,
        cwd="/",
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )


def _binary_major_version(bin_dir: Path) -> str:
    completed = subprocess.run(
        [str(bin_dir / "postgres"), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    match = re.search(r"(\d+)(?:\.\d+)?", completed.stdout)
    return match.group(1) if match else "?"


def _initialise(
    settings: DevstackSettings, paths: PostgresPaths, bin_dir: Path, run_as: RunAs | None
) -> None:
    """Create the cluster once, password-authenticated over loopback TCP only."""
    version_file = paths.data / "PG_VERSION"
    if version_file.is_file():
        data_version = version_file.read_text().strip()
        binary_version = _binary_major_version(bin_dir)
        if data_version != binary_version:
            raise PrerequisiteMissingError(
                f"{paths.data} holds a PostgreSQL {data_version} cluster but the server binaries "
                f"in {bin_dir} are version {binary_version}; install PostgreSQL {data_version} "
                f"or delete {paths.data} (the devstack recreates it, empty)."
            )
        return
    paths.data.mkdir(parents=True, exist_ok=True)
    paths.data.chmod(0o700)
    paths.password_file.write_text(settings.postgres_password + "\n")
    paths.password_file.chmod(0o600)
    _chown_tree(paths.root, run_as)
    completed = _run_as_account(
        [
            str(bin_dir / "initdb"),
            "--pgdata",
            str(paths.data),
            "--username",
            settings.postgres_user,
            f"--pwfile={paths.password_file}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
        ],
        run_as,
        timeout_seconds=180,
    )
    paths.password_file.unlink(missing_ok=True)
    if completed.returncode != 0:
        with paths.log.open("a") as log:
            log.write(completed.stdout + completed.stderr)
        shutil.rmtree(paths.data, ignore_errors=True)
        raise ServiceStartError(
            f"initdb failed for {paths.data}: {completed.stderr.strip()[-400:]} (full output in "
            f"{paths.log})"
        )
    (paths.data / "pg_hba.conf").write_text(
        "# Written by 'xmatch-pipeline devstack up': loopback TCP with a password, nothing else.\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
    )
    _chown_tree(paths.data, run_as)


def _server_options(settings: DevstackSettings) -> list[str]:
    """Given on the command line so a changed port takes effect on the next start."""
    options = {
        "listen_addresses": settings.postgres_host,
        "port": str(settings.postgres_port),
        # TCP only: no socket in /var/run/postgresql to clash with a system PostgreSQL.
        "unix_socket_directories": "",
        "max_connections": "200",
        "shared_buffers": "128MB",
        # A throwaway dev stack: durability traded for speed. Never copy these to production.
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "log_min_messages": "warning",
        "log_line_prefix": "%m [%p] %d ",
    }
    arguments: list[str] = []
    for name, value in options.items():
        arguments += ["-c", f"{name}={value}"]
    return arguments


def postgres_pid(settings: DevstackSettings) -> int | None:
    """The postmaster's pid if this devstack's server runs (recognised by its data folder)."""
    paths = PostgresPaths(settings.devstack_dir)
    return running_pid(paths.pid, str(paths.data))


def preflight_postgres(settings: DevstackSettings) -> tuple[Path, RunAs | None] | None:
    """Check what starting the server needs (free port, binaries, an account that can reach the
    data folder) before anything starts; the binaries' folder and the account to run as, or
    None when ours already runs."""
    if postgres_pid(settings) is not None:
        return None
    ensure_port_free(
        settings.postgres_host, settings.postgres_port, "PostgreSQL server", POSTGRES_PORT_ENV
    )
    bin_dir = find_postgres_bin()
    run_as = _service_account()
    _check_account_can_reach(PostgresPaths(settings.devstack_dir), run_as)
    return bin_dir, run_as


def start_postgres(settings: DevstackSettings) -> None:
    """Start the server unless ours already runs (checks, initialises the cluster once)."""
    preflight = preflight_postgres(settings)
    if preflight is None:
        return
    bin_dir, run_as = preflight
    paths = PostgresPaths(settings.devstack_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    _initialise(settings, paths, bin_dir, run_as)
    launch_detached(
        [str(bin_dir / "postgres"), "-D", str(paths.data), *_server_options(settings)],
        log_file=paths.log,
        working_dir=paths.data,
        run_as=run_as,
        environment={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    if wait_for_pid_file(paths.pid, str(paths.data), timeout_seconds=30) is None:
        raise ServiceStartError(f"PostgreSQL exited right after starting; see {paths.log}")


def wait_until_postgres_ready(
    settings: DevstackSettings, timeout_seconds: float = START_TIMEOUT_SECONDS
) -> None:
    """Wait until the server runs ``SELECT 1``, then create the project's databases if new."""
    from xmatch_pipeline.devtools.devstack.probes import postgres_answers

    paths = PostgresPaths(settings.devstack_dir)
    deadline = time.monotonic() + timeout_seconds
    while not postgres_answers(_maintenance_url(settings)):
        if postgres_pid(settings) is None:
            raise ServiceStartError(f"PostgreSQL stopped while starting; see {paths.log}")
        if time.monotonic() > deadline:
            raise ServiceStartError(
                f"PostgreSQL did not accept connections on {settings.postgres_host}:"
                f"{settings.postgres_port} within {timeout_seconds:.0f} s; see {paths.log}"
            )
        time.sleep(0.3)
    _create_databases(settings)


def _maintenance_url(settings: DevstackSettings) -> str:
    """The URL of the ``postgres`` database, present in every cluster."""
    return settings.database_url.rsplit("/", 1)[0] + "/postgres"


def _create_databases(settings: DevstackSettings) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    server = create_engine(
        _maintenance_url(settings),
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 10},
    )
    try:
        with server.connect() as connection:
            for database in (settings.postgres_database, settings.dagster_database):
                exists = connection.execute(
                    text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": database}
                ).scalar()
                if exists is None:
                    quoted = connection.dialect.identifier_preparer.quote(database)
                    connection.execute(text(f"CREATE DATABASE {quoted}"))
    finally:
        server.dispose()


def stop_postgres(settings: DevstackSettings) -> bool:
    """Stop our server with a fast shutdown (SIGINT: it disconnects clients and checkpoints;
    SIGTERM would wait for every client to leave), then SIGKILL after a grace period."""
    pid = postgres_pid(settings)
    if pid is None:
        return False
    paths = PostgresPaths(settings.devstack_dir)
    if not stop_process(pid, signal.SIGINT):
        with paths.log.open("a") as log:
            log.write("devstack: PostgreSQL ignored the fast shutdown and was killed\n")
    return True
