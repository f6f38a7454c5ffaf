"""The deployment files agree with the code (no Docker engine here to run them)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from xmatch_pipeline.settings import load_settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?::(?P<kind>[-?])(?P<value>[^}]*))?\}")


def _interpolate(text: str) -> str:
    """Compose's ${NAME:-default} and ${NAME:?error}, as if .env set DB_PASSWORD only."""

    def value(match: re.Match[str]) -> str:
        if match["name"] == "DB_PASSWORD":
            return "not-a-real-password"
        return match["value"] if match["kind"] == "-" else ""

    return _VARIABLE.sub(value, text)


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load(
        _interpolate((PROJECT_ROOT / "docker-compose.yml").read_text())
    )
    return compose


def test_compose_environment_is_valid_pipeline_settings():
    compose = _compose()
    for service in ("code-location", "webserver", "daemon", "worker"):
        environment = {k: str(v) for k, v in compose["services"][service]["environment"].items()}
        settings = load_settings(environment)
        assert settings.kafka_bootstrap_servers == "kafka:9092"
        assert settings.database.host == "postgres"
        assert "not-a-real-password" not in repr(settings)


def test_compose_dagster_storage_variables_are_those_dagster_yaml_reads():
    dagster_yaml = (PROJECT_ROOT / "dagster.yaml").read_text()
    wanted = set(re.findall(r"\{env: (\w+)\}", dagster_yaml))
    assert {"DAGSTER_PG_HOST", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"} <= wanted
    compose = _compose()
    for service in ("webserver", "daemon", "worker"):
        assert wanted <= set(compose["services"][service]["environment"])


def test_compose_broker_is_the_redis_service_and_workers_scale():
    compose = _compose()
    services = compose["services"]
    broker = str(services["worker"]["environment"]["CELERY_BROKER_URL"])
    assert broker.startswith("redis://redis:")
    worker = services["worker"]
    assert worker["command"][:2] == ["xmatch-pipeline", "worker"]
    # --scale needs no fixed name and no published port.
    assert "container_name" not in worker
    assert "ports" not in worker


def test_compose_files_mounted_and_copied_exist():
    compose = _compose()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (PROJECT_ROOT / source).is_file(), source
    for line in (PROJECT_ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (PROJECT_ROOT / source).exists(), source
