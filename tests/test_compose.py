"""compose/ cannot run here (no Docker engine): check that what it says matches the code."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.main import get_command

from infra.settings import load_settings
from linecheck.cli import app

COMPOSE = Path(__file__).resolve().parents[1] / "compose" / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load(COMPOSE.read_text())


def _linecheck_services(compose: dict) -> dict:  # type: ignore[type-arg]
    return {n: s for n, s in compose["services"].items() if s.get("image") == "linecheck:latest"}


def test_every_linecheck_setting_in_compose_is_a_valid_setting(
    compose: dict,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = _linecheck_services(compose)
    assert {"worker", "simulator", "migrate", "model"} <= set(services)
    for name, service in services.items():
        env = service["environment"]
        assert env, name
        for key, value in env.items():
            assert key.startswith("LINECHECK_"), key
            monkeypatch.setenv(key, str(value))
        settings = load_settings()  # unknown or malformed keys raise here
        assert settings.kafka.bootstrap_servers == "kafka:9092"
        assert settings.postgres.url.get_secret_value().endswith("@postgres:5432/linecheck")
        assert settings.redis.url.get_secret_value().endswith("@redis:6379/0")


def test_compose_commands_are_commands_of_the_cli(compose: dict) -> None:  # type: ignore[type-arg]
    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    for name, service in _linecheck_services(compose).items():
        command = service.get("command")
        if command:
            assert command[0] in commands, f"{name}: unknown linecheck command {command[0]!r}"
    kafka = compose["services"]["kafka"]["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    postgres = compose["services"]["postgres"]["environment"]
    assert postgres["POSTGRES_DB"] == "linecheck"


def test_the_image_copies_every_package_the_project_installs() -> None:
    """A package added to pyproject.toml but not to the Dockerfile breaks the image."""
    import re
    import tomllib

    root = COMPOSE.parents[1]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = set(
        re.findall(r"^COPY (\w+) \./\1$", (root / "compose" / "Dockerfile").read_text(), re.M)
    )
    assert packages == copied
    assert packages == set(pyproject["tool"]["importlinter"]["root_packages"])


def test_servers_listen_on_localhost_and_no_password_is_committed(
    compose: dict,  # type: ignore[type-arg]
) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every address"
    text = COMPOSE.read_text()
    assert "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?" in text
    assert "linecheck:linecheck@" not in text and "ADMIN_PASSWORD: admin" not in text
    # workers do not run DDL: the one-shot migrate job does
    for name in ("worker", "review-sink"):
        env = compose["services"][name]["environment"]
        assert env.get("LINECHECK_WORKER__MIGRATE", "false") in ("false", False)
    assert compose["services"]["migrate"]["command"] == ["db", "upgrade"]
