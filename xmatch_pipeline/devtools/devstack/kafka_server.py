"""The devstack's Apache Kafka broker: one KRaft node from the jars on Maven Central.

It listens on PLAINTEXT (anonymous super users: what the tests and tools use) and on
SASL_SSL with SCRAM-SHA-512 and ACLs (:mod:`~xmatch_pipeline.devtools.devstack.kafka_security`), on
the port after the controller's unless ``XMATCH_DEVSTACK_KAFKA_SASL_PORT`` says otherwise.
"""

from __future__ import annotations

import base64
import signal
import subprocess
import time
import uuid
from importlib import resources
from pathlib import Path

from xmatch_pipeline.devtools.devstack.errors import ServiceStartError
from xmatch_pipeline.devtools.devstack.java_runtime import find_java
from xmatch_pipeline.devtools.devstack.kafka_jars import ensure_kafka_jars, ensure_maven_if_needed
from xmatch_pipeline.devtools.devstack.kafka_security import (
    SASL_LISTENER,
    provision_devstack_user,
    sasl_listener_properties,
)
from xmatch_pipeline.devtools.devstack.kafka_tls import ensure_broker_certificates
from xmatch_pipeline.devtools.devstack.ports import ensure_port_free
from xmatch_pipeline.devtools.devstack.processes import (
    launch_detached,
    running_pid,
    stop_process,
    wait_for_pid_file,
)
from xmatch_pipeline.devtools.devstack.settings import (
    KAFKA_CONTROLLER_PORT_ENV,
    KAFKA_PORT_ENV,
    KAFKA_SASL_PASSWORD,
    KAFKA_SASL_PORT_ENV,
    KAFKA_SASL_USER,
    DevstackSettings,
)

START_TIMEOUT_SECONDS = 120.0
NODE_ID = 1


class KafkaPaths:
    """Files of the broker inside the devstack folder."""

    def __init__(self, devstack_dir: Path) -> None:
        self.root = devstack_dir / "kafka"
        self.libs = self.root / "libs"
        self.data = self.root / "data"
        self.config = self.root / "server.properties"
        self.log_config = self.root / "log4j.properties"
        self.log = self.root / "kafka.log"
        self.pid = self.root / "kafka.pid"
        self.tls = self.root / "tls"


def _packaged_log_config() -> str:
    return (
        resources.files("xmatch_pipeline.devtools.devstack")
        .joinpath("kafka-log4j.properties")
        .read_text()
    )


def _cluster_id() -> str:
    """A KRaft cluster id: a random UUID in URL-safe base64, as ``kafka-storage random-uuid``.

    Like Kafka's own generator it never starts with '-', which the format tool would take for
    an option.
    """
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


def _server_properties(settings: DevstackSettings, paths: KafkaPaths) -> str:
    host = settings.kafka_host
    sasl = f"{SASL_LISTENER}://{host}:{settings.kafka_sasl_port}"
    entries = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.voters": f"{NODE_ID}@{host}:{settings.kafka_controller_port}",
        "listeners": (
            f"PLAINTEXT://{host}:{settings.kafka_port},{sasl},"
            f"CONTROLLER://{host}:{settings.kafka_controller_port}"
        ),
        "advertised.listeners": f"PLAINTEXT://{host}:{settings.kafka_port},{sasl}",
        "listener.security.protocol.map": (
            f"PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,{SASL_LISTENER}:{SASL_LISTENER}"
        ),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(paths.data),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        # Few internal partitions: the single-node broker starts and creates them faster.
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.num.partitions": "4",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
        "delete.topic.enable": "true",
        "log.retention.hours": "168",
        "log.segment.bytes": "104857600",
        **sasl_listener_properties(ensure_broker_certificates(paths.tls, host)),
    }
    lines = ["# Written by 'xmatch-pipeline devstack up' on every start; edits are overwritten."]
    lines += [f"{key}={value}" for key, value in entries.items()]
    return "\n".join(lines) + "\n"


def _java_command(java: str, paths: KafkaPaths, main_class: str, *arguments: str) -> list[str]:
    return [
        java,
        "-Xms256m",
        "-Xmx768m",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{paths.log_config}",
        "-cp",
        f"{paths.libs}/*",
        main_class,
        *arguments,
    ]


def _format_storage(java: str, paths: KafkaPaths) -> None:
    """Give a new data folder its KRaft metadata (once; a formatted folder is kept)."""
    if (paths.data / "meta.properties").is_file():
        return
    command = _java_command(
        java,
        paths,
        "kafka.tools.StorageTool",
        "format",
        "-t",
        _cluster_id(),
        "-c",
        str(paths.config),
    )
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if completed.returncode != 0:
        with paths.log.open("a") as log:
            log.write(completed.stdout + completed.stderr)
        raise ServiceStartError(
            f"formatting the Kafka data folder {paths.data} failed; see {paths.log}. "
            f"It said: {(completed.stderr or completed.stdout).strip()[-300:]}"
        )


def kafka_pid(settings: DevstackSettings) -> int | None:
    """The pid of this devstack's broker if it runs (recognised by its config file path)."""
    paths = KafkaPaths(settings.devstack_dir)
    return running_pid(paths.pid, str(paths.config))


def preflight_kafka(settings: DevstackSettings) -> str | None:
    """Check what starting the broker needs (free ports, Java, Maven unless the jars are here),
    before anything starts; the ``java`` to use, or None when ours already runs."""
    if kafka_pid(settings) is not None:
        return None
    for port, environment_variable in (
        (settings.kafka_port, KAFKA_PORT_ENV),
        (settings.kafka_controller_port, KAFKA_CONTROLLER_PORT_ENV),
        (settings.kafka_sasl_port, KAFKA_SASL_PORT_ENV),
    ):
        ensure_port_free(settings.kafka_host, port, "Kafka broker", environment_variable)
    java = find_java()
    ensure_maven_if_needed(KafkaPaths(settings.devstack_dir).libs)
    return java


def start_kafka(settings: DevstackSettings) -> None:
    """Start the broker unless ours already runs (checks, fetches jars, formats storage)."""
    java = preflight_kafka(settings)
    if java is None:
        return
    paths = KafkaPaths(settings.devstack_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    ensure_kafka_jars(paths.libs)
    paths.data.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(_server_properties(settings, paths))
    paths.log_config.write_text(_packaged_log_config())
    _format_storage(java, paths)
    launch_detached(
        _java_command(java, paths, "kafka.Kafka", str(paths.config)),
        log_file=paths.log,
        working_dir=paths.root,
        pid_file=paths.pid,
    )
    if wait_for_pid_file(paths.pid, str(paths.config)) is None:
        raise ServiceStartError(f"the Kafka broker exited right after starting; see {paths.log}")


def wait_until_kafka_ready(
    settings: DevstackSettings, timeout_seconds: float = START_TIMEOUT_SECONDS
) -> None:
    """Wait until the broker answers metadata and a transaction commits, or explain why not."""
    from xmatch_pipeline.devtools.devstack.probes import kafka_answers, kafka_transactions_work

    paths = KafkaPaths(settings.devstack_dir)
    deadline = time.monotonic() + timeout_seconds
    while not kafka_answers(settings.kafka_bootstrap_servers):
        if kafka_pid(settings) is None:
            raise ServiceStartError(
                f"the Kafka broker stopped while starting; see the end of {paths.log}"
            )
        if time.monotonic() > deadline:
            raise ServiceStartError(
                f"the Kafka broker did not answer on {settings.kafka_bootstrap_servers} within "
                f"{timeout_seconds:.0f} s; see {paths.log}"
            )
        time.sleep(0.5)
    remaining = max(deadline - time.monotonic(), 20.0)
    problem = kafka_transactions_work(settings.kafka_bootstrap_servers, remaining)
    if problem is not None:
        raise ServiceStartError(
            f"the Kafka broker on {settings.kafka_bootstrap_servers} answers but a transaction "
            f"failed: {problem}; see {paths.log}"
        )
    provision_devstack_user(settings.kafka_bootstrap_servers, KAFKA_SASL_USER, KAFKA_SASL_PASSWORD)


def stop_kafka(settings: DevstackSettings) -> bool:
    """Stop our broker (SIGTERM, then SIGKILL after a grace period); False if it was not up."""
    paths = KafkaPaths(settings.devstack_dir)
    pid = kafka_pid(settings)
    if pid is None:
        paths.pid.unlink(missing_ok=True)
        return False
    if not stop_process(pid, signal.SIGTERM):
        with paths.log.open("a") as log:
            log.write("devstack: the broker ignored SIGTERM and was killed\n")
    paths.pid.unlink(missing_ok=True)
    return True
