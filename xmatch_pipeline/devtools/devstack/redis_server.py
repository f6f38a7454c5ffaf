"""The devstack's Redis: Celery's broker (the run queue) and result backend (run task states).

Debian's ``redis-server`` binary, run with a config of our own (loopback, our port, data under
``.devstack/redis``), so it is independent of a system Redis that installing the package may
have started on 6379. The append-only file keeps the queue across a restart: a run sent to
the broker before Redis stopped is still there when it comes back.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from xmatch_pipeline.devtools.devstack.errors import PrerequisiteMissingError, ServiceStartError
from xmatch_pipeline.devtools.devstack.ports import ensure_port_free
from xmatch_pipeline.devtools.devstack.processes import (
    launch_detached,
    running_pid,
    stop_process,
    wait_for_pid_file,
)
from xmatch_pipeline.devtools.devstack.settings import REDIS_PORT_ENV, DevstackSettings

PACKAGE = "redis-server"
START_TIMEOUT_SECONDS = 30.0
APT_TIMEOUT_SECONDS = 600
_INSTALL_HINT = f"install Debian's '{PACKAGE}' package: 'apt-get install {PACKAGE}'"


class RedisPaths:
    """Files of the server inside the devstack folder."""

    def __init__(self, devstack_dir: Path) -> None:
        self.root = devstack_dir / "redis"
        self.data = self.root / "data"
        self.config = self.root / "redis.conf"
        self.log = self.root / "redis.log"
        self.pid = self.root / "redis.pid"


def _installed_binary() -> str | None:
    return shutil.which(PACKAGE) or next(
        (path for path in ("/usr/bin/redis-server",) if os.access(path, os.X_OK)), None
    )


def find_redis_server() -> str:
    """The ``redis-server`` binary; as root, install Debian's package when it is missing."""
    found = _installed_binary()
    if found is not None:
        return found
    apt_get = shutil.which("apt-get")
    if os.geteuid() != 0 or apt_get is None:
        raise PrerequisiteMissingError(f"Redis (Celery's broker) was not found; {_INSTALL_HINT}.")
    completed = _apt_get(apt_get, "install", "-y", "--no-install-recommends", PACKAGE)
    if completed.returncode != 0:  # a fresh machine may have no package lists yet
        _apt_get(apt_get, "update")
        completed = _apt_get(apt_get, "install", "-y", "--no-install-recommends", PACKAGE)
    found = _installed_binary()
    if completed.returncode != 0 or found is None:
        said = (completed.stderr or completed.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PrerequisiteMissingError(
            f"'apt-get install {PACKAGE}' failed ({said[0]}), also after 'apt-get update'; "
            f"check the package mirror, or {_INSTALL_HINT}."
        )
    return found


def _apt_get(apt_get: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [apt_get, *arguments],
        capture_output=True,
        text=True,
        timeout=APT_TIMEOUT_SECONDS,
        check=False,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


def _config(settings: DevstackSettings, paths: RedisPaths) -> str:
    entries = {
        "bind": settings.redis_host,
        "port": str(settings.redis_port),
        "protected-mode": "yes",
        "daemonize": "no",
        "dir": str(paths.data),
        "logfile": '""',
        "appendonly": "yes",
        "appendfsync": "everysec",
        "save": '""',
        "databases": "4",
    }
    lines = ["# Written by 'xmatch-pipeline devstack up' on every start; edits are overwritten."]
    lines += [f"{key} {value}" for key, value in entries.items()]
    return "\n".join(lines) + "\n"


def _command_marker(settings: DevstackSettings) -> str:
    """What our server's command line shows: Redis replaces it with ``redis-server host:port``
    (so the config path, as Kafka's marker, is not there)."""
    return f"redis-server {settings.redis_host}:{settings.redis_port}"


def redis_pid(settings: DevstackSettings) -> int | None:
    """The pid of this devstack's Redis if it runs (its pid file, its address)."""
    paths = RedisPaths(settings.devstack_dir)
    return running_pid(paths.pid, _command_marker(settings))


def redis_answers(url: str, timeout_seconds: float = 2.0) -> bool:
    """Whether a Redis server answers PING at ``url``."""
    import redis

    client = redis.Redis.from_url(
        url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def preflight_redis(settings: DevstackSettings) -> str | None:
    """The ``redis-server`` to start (installed if need be), or None when ours already runs."""
    if redis_pid(settings) is not None:
        return None
    ensure_port_free(settings.redis_host, settings.redis_port, "Redis", REDIS_PORT_ENV)
    return find_redis_server()


def start_redis(settings: DevstackSettings) -> None:
    """Start our Redis unless it already runs."""
    server = preflight_redis(settings)
    if server is None:
        return
    paths = RedisPaths(settings.devstack_dir)
    paths.data.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(_config(settings, paths))
    launch_detached(
        [server, str(paths.config)],
        log_file=paths.log,
        working_dir=paths.root,
        pid_file=paths.pid,
    )
    # Before Redis renames itself its command line names the config file; both name the binary.
    if wait_for_pid_file(paths.pid, PACKAGE) is None:
        raise ServiceStartError(f"Redis exited right after starting; see {paths.log}")


def wait_until_redis_ready(
    settings: DevstackSettings, timeout_seconds: float = START_TIMEOUT_SECONDS
) -> None:
    """Wait until our Redis answers PING, or explain why not."""
    paths = RedisPaths(settings.devstack_dir)
    deadline = time.monotonic() + timeout_seconds
    while not redis_answers(settings.celery_broker_url):
        # Still starting: it may not have renamed itself yet.
        if running_pid(paths.pid, PACKAGE) is None:
            raise ServiceStartError(f"Redis stopped while starting; see the end of {paths.log}")
        if time.monotonic() > deadline:
            raise ServiceStartError(
                f"Redis did not answer on {settings.redis_host}:{settings.redis_port} within "
                f"{timeout_seconds:.0f} s; see {paths.log}"
            )
        time.sleep(0.1)


def stop_redis(settings: DevstackSettings) -> bool:
    """Stop our Redis (SIGTERM: it flushes the append-only file); False if it was not up."""
    paths = RedisPaths(settings.devstack_dir)
    pid = redis_pid(settings)
    if pid is None:
        paths.pid.unlink(missing_ok=True)
        return False
    if not stop_process(pid, signal.SIGTERM):
        with paths.log.open("a") as log:
            log.write("devstack: Redis ignored SIGTERM and was killed\n")
    paths.pid.unlink(missing_ok=True)
    return True
