"""What every `linecheck` command module shares: the stderr console and the settings option."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError
from rich.console import Console

from infra.settings import Settings, load_settings

err = Console(stderr=True)
ConfigOption = Annotated[
    Optional[Path],  # noqa: UP045 - typer needs Optional on 3.11
    typer.Option(
        "--config",
        "-c",
        envvar="LINECHECK_CONFIG",
        help="TOML settings file (default: the running `linecheck up` of this folder's work dir)",
    ),
]


def settings_or_exit(config: Path | None, find_running: bool = True) -> Settings:
    """The validated settings, or exit 2 with the validation error on stderr. Without a
    config file, a `linecheck up` running on this work dir lends its settings (servers)."""
    try:
        settings = load_settings(config)
        if config is None and find_running:
            from linecheck.running import running_service

            found = running_service(settings.work_dir)
            if found is not None:
                settings = load_settings(Path(found["config"]))
        return settings
    except (ValidationError, FileNotFoundError, ValueError) as exc:
        err.print(f"[red]invalid configuration:[/red] {exc}")
        raise typer.Exit(2) from exc


@contextlib.contextmanager
def audit_store(settings: Settings) -> Iterator[str]:
    """The running service's audit store, else the one `linecheck up` keeps in the work
    dir (served for the command's duration), else the settings' external one."""
    from infra.db import upgrade
    from linecheck.embedded import postgres_data_dir, start_postgres
    from linecheck.running import running_service, service_dir

    url = settings.postgres.url.get_secret_value()
    folder = service_dir(settings.work_dir) / "pg"
    if running_service(settings.work_dir) is None and postgres_data_dir(folder).exists():
        server = start_postgres(folder)
        try:
            upgrade(server.url)
            yield server.url
        finally:
            server.stop()
        return
    yield url
