"""`linecheck up`: the whole system as a long-running service on one machine.

Embedded servers by default (PostgreSQL's data kept in ``work_dir/service/pg``; the object
store and models at their configured folders; the broker is memory-only) or the external
ones with ``--external``. A supervisor keeps the worker group, the review sink and the web
server running; SIGINT/SIGTERM stop them gracefully (each finishes and commits what it has
in hand) and the command exits 0."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from infra.db import upgrade
from infra.kafka_admin import ensure_topics
from infra.settings import Settings
from linecheck.embedded import services
from linecheck.processes import ProcessError, Supervisor, wait_ready
from linecheck.running import clear_running, running_service, service_dir, write_running


class ServiceError(RuntimeError):
    """`linecheck up` cannot start; the message says why."""


@dataclass
class ServiceOptions:
    workers: int = 2
    host: str = "127.0.0.1"
    port: int = 8000
    external: bool = False
    threads: int = 1


def metrics_dir(settings: Settings) -> Path:
    """The group's multiprocess metrics: set before prometheus_client is first imported
    (it picks its storage at import), emptied at each start (old pids are no group)."""
    folder = service_dir(settings.work_dir) / "metrics"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return folder


def _rebuild_counters(live: Settings, console: Console) -> None:
    """Redis is memory-only here: refill its live counters from the audit store."""
    from workers.audit_sink import LiveStats, rebuild_live_stats

    r = live.redis
    stats = LiveStats(r.url.get_secret_value(), r.key_prefix, r.window_s, r.timeout_s)
    try:
        totals = rebuild_live_stats(stats, live.postgres.url.get_secret_value())
        console.log(f"live counters rebuilt from the audit store: {totals}")
    finally:
        stats.close()


def _write_children(folder: Path, supervisor: Supervisor) -> None:
    """``children.json``: each supervised process's pid and restarts (for operators)."""
    children = {
        name: {"pid": child.proc.pid, "restarts": supervisor.restarts.get(name, 0)}
        for name, child in supervisor.children.items()
    }
    tmp = folder / "children.json.tmp"
    tmp.write_text(json.dumps(children, indent=1))
    os.replace(tmp, folder / "children.json")


def run_service(settings: Settings, options: ServiceOptions, console: Console) -> int:
    """Start everything, supervise until SIGINT/SIGTERM, stop gracefully; the exit code."""
    from training.synthetic_model import ensure_model

    found = running_service(settings.work_dir)
    if found is not None:
        raise ServiceError(
            f"linecheck up already runs for {settings.work_dir} "
            f"(pid {found['pid']}, {found['url']})"
        )
    folder = service_dir(settings.work_dir)
    metrics_dir(settings)
    from prometheus_client import Counter

    restarts = Counter("linecheck_restarts_total", "Supervised processes restarted", ["process"])
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stop.set())
    model_dir = ensure_model(settings, console=console)
    with services(settings, options.external, console, keep_in=folder) as live:
        live.web.host, live.web.port = options.host, options.port
        upgrade(live.postgres.url.get_secret_value())
        ensure_topics(live.kafka.bootstrap_servers, live.topics, live.kafka.partitions)
        _rebuild_counters(live, console)
        registered = _registered_products(live)
        url = f"http://{options.host}:{options.port}"
        write_running(live, url)

        def exited(name: str, pid: int) -> None:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(pid)  # its live gauges (partitions held) leave the sums

        supervisor = Supervisor(live, folder / "logs", log=console.log, on_exit=exited)
        try:
            workers = [
                supervisor.add(
                    "worker", f"worker-{i + 1}", LINECHECK_MODEL__THREADS=str(options.threads)
                )
                for i in range(options.workers)
            ]
            sink = supervisor.add("review-sink", "review-sink")
            supervisor.add("web", "web")
            with console.status("workers loading the model and joining the group"):
                wait_ready([*workers, sink], timeout=180)
            supervisor.watch()
            console.print(
                f"[green]linecheck up[/green] · model {model_dir.name} · "
                f"{options.workers} worker(s)\n"
                f"  review station  {url}/  (accounts: linecheck users add NAME)\n"
                f"  health          {url}/healthz  {url}/readyz  metrics {url}/metrics\n"
                f"  Kafka           {live.kafka.bootstrap_servers}  (publish to "
                f"{live.topics.flagged})\n"
                f"  products        {registered}\n"
                f"  settings        {folder / 'running.toml'} (used by commands run here)\n"
                f"  logs            {folder / 'logs'}\n"
                "Ctrl-C or SIGTERM stops it."
            )
            counted: dict[str, int] = {}
            while True:
                for name, n in supervisor.restarts.items():
                    if n > counted.get(name, 0):
                        restarts.labels(name).inc(n - counted.get(name, 0))
                counted = dict(supervisor.restarts)
                _write_children(folder, supervisor)
                if stop.wait(1.0):
                    break
        except ProcessError as exc:
            raise ServiceError(str(exc)) from exc
        finally:
            console.log("stopping: workers finish and commit what they hold")
            supervisor.stop(timeout=30)
            clear_running(settings.work_dir)
    console.log("stopped")
    return 0


def _registered_products(settings: Settings) -> str:
    """The banner's line on the product registry: boards of unregistered products are dead
    letters, so an empty registry is said at start."""
    from infra.db import make_engine
    from inspection.products import ProductStore

    engine = make_engine(settings.postgres.url.get_secret_value())
    try:
        entries = ProductStore(engine).entries()
    finally:
        engine.dispose()
    if not entries:
        return (
            "none registered: boards are dead letters until `linecheck products set PRODUCT "
            "--mode reference` (linecheck simulate registers its own)"
        )
    names = ", ".join(f"{p} ({e.mode})" for p, e in list(entries.items())[:6])
    return names + (f" … {len(entries)} in all" if len(entries) > 6 else "")
