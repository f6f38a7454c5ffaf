"""The Kafka broker's jars, fetched once from Maven Central with Maven, then reused."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from importlib import resources
from pathlib import Path

from xmatch_pipeline.devtools.devstack.errors import PrerequisiteMissingError

#: Pinned so a fetch today and a fetch next year resolve the same jars the same way.
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
MAVEN_ATTEMPTS = 3
MAVEN_TIMEOUT_SECONDS = 900


def _packaged_pom() -> str:
    return (
        resources.files("xmatch_pipeline.devtools.devstack").joinpath("kafka-pom.xml").read_text()
    )


_MAVEN_MISSING = (
    "Maven ('mvn') is required once, to fetch the Kafka broker's jars from Maven Central, "
    "and was not found on PATH. Install it: 'apt-get install maven'."
)


def _fetched_pom(libs_dir: Path) -> Path:
    return libs_dir / "kafka-pom.xml"


def jars_fetched(libs_dir: Path) -> bool:
    """Whether a complete fetch for the packaged pom is in place (its copy is written last)."""
    fetched = _fetched_pom(libs_dir)
    return fetched.is_file() and fetched.read_text() == _packaged_pom()


def ensure_maven_if_needed(libs_dir: Path) -> None:
    """Maven is needed only while the jars are not fetched yet: check before starting anything."""
    if not jars_fetched(libs_dir) and shutil.which("mvn") is None:
        raise PrerequisiteMissingError(_MAVEN_MISSING)


def ensure_kafka_jars(libs_dir: Path) -> None:
    """Fetch the broker's jars from Maven Central once; reuse them while the pom is unchanged."""
    if jars_fetched(libs_dir):
        return
    pom = _packaged_pom()
    maven = shutil.which("mvn")
    if maven is None:
        raise PrerequisiteMissingError(_MAVEN_MISSING)
    staging = libs_dir.with_name(libs_dir.name + ".fetching")
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
    shutil.rmtree(libs_dir, ignore_errors=True)
    (staging / "jars").rename(libs_dir)
    # Written last: its presence means the jars are complete.
    _fetched_pom(libs_dir).write_text(pom)
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
