"""Service commands: `up` (the whole system, supervised), `web` (the review station and
health endpoints) and `users` (the station's operator accounts)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from linecheck.cli.common import ConfigOption, audit_store, err, settings_or_exit

if TYPE_CHECKING:
    from linecheck.station.accounts import Accounts

users_app = typer.Typer(no_args_is_help=True, help="Operator accounts of the review station.")


def up(
    workers: Annotated[int, typer.Option(min=1, help="worker processes in the group")] = 2,
    host: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="web server address (default: web.host, 127.0.0.1)"),
    ] = None,
    port: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=1, max=65535, help="web server port (default: web.port, 8000)"),
    ] = None,
    threads: Annotated[int, typer.Option(min=1, help="inference threads per worker")] = 1,
    external: Annotated[
        bool, typer.Option(help="use the Kafka/PostgreSQL/Redis of the settings")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Run linecheck as a service: workers, review sink and review station, supervised,
    until Ctrl-C or SIGTERM (then it finishes what is in hand and exits 0)."""
    from linecheck.service import ServiceError, ServiceOptions, run_service

    settings = settings_or_exit(config, find_running=False)
    options = ServiceOptions(
        workers=workers,
        host=host or settings.web.host,
        port=port or settings.web.port,
        external=external,
        threads=threads,
    )
    try:
        code = run_service(settings, options, err)
    except ServiceError as exc:
        err.print(f"[red]linecheck up failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    raise typer.Exit(code)


def web(
    host: Annotated[Optional[str], typer.Option(help="default: web.host")] = None,  # noqa: UP045
    port: Annotated[Optional[int], typer.Option(help="default: web.port")] = None,  # noqa: UP045
    config: ConfigOption = None,
) -> None:
    """Serve the review station, its JSON API, /healthz, /readyz and /metrics."""
    import uvicorn

    from linecheck.station.app import create_app

    settings = settings_or_exit(config)
    uvicorn.run(
        create_app(settings),
        host=host or settings.web.host,
        port=port or settings.web.port,
        log_level="info",
        proxy_headers=False,
    )


def _accounts(url: str) -> Accounts:
    from infra.db import make_engine
    from linecheck.station.accounts import Accounts

    return Accounts(make_engine(url))


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="the operator's sign-in name")],
    password: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="asked for (hidden) when omitted", envvar="LINECHECK_USER_PASSWORD"),
    ] = None,
    replace: Annotated[bool, typer.Option(help="set a new password if the user exists")] = False,
    config: ConfigOption = None,
) -> None:
    """Create an operator account (effective at once, also while `linecheck up` runs)."""
    from linecheck.station.accounts import AccountError

    settings = settings_or_exit(config)
    if password is None:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    with audit_store(settings) as url:
        accounts = _accounts(url)
        try:
            created = accounts.add(name, password, replace=replace)
        except AccountError as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from exc
        finally:
            accounts.engine.dispose()
    err.print(f"{'created' if created else 'updated'} user {name}")


@users_app.command("list")
def users_list(config: ConfigOption = None) -> None:
    """The operator accounts and when they were made."""
    settings = settings_or_exit(config)
    with audit_store(settings) as url:
        accounts = _accounts(url)
        try:
            for name, created in accounts.list():
                print(f"{name}\t{created.isoformat()}")
        finally:
            accounts.engine.dispose()


@users_app.command("remove")
def users_remove(name: str, config: ConfigOption = None) -> None:
    """Remove an account (its sessions end at their next request)."""
    settings = settings_or_exit(config)
    with audit_store(settings) as url:
        accounts = _accounts(url)
        try:
            removed = accounts.remove(name)
        finally:
            accounts.engine.dispose()
    if not removed:
        err.print(f"[red]no user {name!r}[/red]")
        raise typer.Exit(1)
    err.print(f"removed user {name}")


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(web)
    app.add_typer(users_app, name="users")
