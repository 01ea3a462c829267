"""Child processes of linecheck (workers, the review sink) started, watched and stopped.

Each child is ``python -m linecheck COMMAND`` configured through the environment (the
parent's settings as ``LINECHECK_*`` variables), logging to ``NAME.log`` and touching
``NAME.ready`` once it holds its partitions.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from infra.settings import Settings, settings_env


class ProcessError(RuntimeError):
    """A child process exited early or did not become ready in time."""


@dataclass
class WorkerProcess:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    ready_path: Path

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def spawn(command: str, name: str, settings: Settings, log_dir: Path, **env: str) -> WorkerProcess:
    """`linecheck COMMAND` as a child process named `name`, configured through the
    environment, logging to `log_dir/NAME.log`, touching `NAME.ready` once it holds partitions."""
    log_dir.mkdir(parents=True, exist_ok=True)
    ready = log_dir / f"{name}.ready"
    ready.unlink(missing_ok=True)
    child_env = {
        **os.environ,
        **settings_env(settings),
        "LINECHECK_WORKER__NAME": name,
        "LINECHECK_WORKER__READY_FILE": str(ready),
        **env,
    }
    child_env.pop("LINECHECK_WORKER__METRICS_PORT", None)  # one port cannot serve them all
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:  # a restarted child appends: its history stays
        proc = subprocess.Popen(
            [sys.executable, "-m", "linecheck", command],
            env=child_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return WorkerProcess(name, proc, log_path, ready)


def start_workers(
    settings: Settings, count: int, log_dir: Path, threads: int = 1
) -> list[WorkerProcess]:
    """`count` worker processes in one consumer group."""
    return [
        spawn("worker", f"worker-{i + 1}", settings, log_dir, LINECHECK_MODEL__THREADS=str(threads))
        for i in range(count)
    ]


def start_review_sink(settings: Settings, log_dir: Path) -> WorkerProcess:
    """The review sink (`linecheck review-sink`) as a child process, like the workers."""
    return spawn("review-sink", "review-sink", settings, log_dir)


def wait_ready(workers: list[WorkerProcess], timeout: float = 120.0) -> None:
    """Block until every worker has loaded its model and holds partitions."""
    deadline = time.monotonic() + timeout
    while not all(w.ready_path.exists() for w in workers):
        for w in workers:
            if w.proc.poll() is not None:
                raise ProcessError(f"{w.name} exited with code {w.proc.returncode}:\n{w.tail()}")
        if time.monotonic() > deadline:
            late = [w.name for w in workers if not w.ready_path.exists()]
            raise ProcessError(f"workers not ready after {timeout:.0f}s: {', '.join(late)}")
        time.sleep(0.2)


def stop_workers(workers: list[WorkerProcess], timeout: float = 20.0) -> None:
    for w in workers:
        if w.proc.poll() is None:
            w.proc.terminate()
    for w in workers:
        try:
            w.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait(timeout)


class Supervisor:
    """Keeps children running: one that exits is started again after a backoff (1 s
    doubling to 30 s; reset once it has run a minute), and every restart is logged and
    counted. ``watch()`` runs it on a background thread until ``stop()``."""

    def __init__(
        self,
        settings: Settings,
        log_dir: Path,
        log: Callable[[str], None] = print,
        on_exit: Callable[[str, int], None] | None = None,
    ):
        self.settings = settings
        self.log_dir = log_dir
        self.log = log
        self.on_exit = on_exit  # (name, pid) of a child that exited: metrics bookkeeping
        self.children: dict[str, WorkerProcess] = {}
        self.restarts: dict[str, int] = {}
        self._specs: dict[str, tuple[str, dict[str, str]]] = {}
        self._due: dict[str, float] = {}
        self._started: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, command: str, name: str, **env: str) -> WorkerProcess:
        with self._lock:
            self._specs[name] = (command, env)
            self.restarts.setdefault(name, 0)
            return self._start(name)

    def _start(self, name: str) -> WorkerProcess:
        command, env = self._specs[name]
        child = spawn(command, name, self.settings, self.log_dir, **env)
        self.children[name] = child
        self._started[name] = time.monotonic()
        return child

    def poll(self) -> list[str]:
        """Restart the children that exited and whose backoff has passed; their names."""
        restarted = []
        now = time.monotonic()
        with self._lock:
            for name, child in list(self.children.items()):
                if child.proc.poll() is None:
                    continue
                if name not in self._due:
                    if self.on_exit is not None:
                        self.on_exit(name, child.proc.pid)
                    ran = now - self._started[name]
                    tries = 0 if ran > 60 else self.restarts[name]
                    delay = min(30.0, 2.0**tries)
                    self._due[name] = now + delay
                    self.log(
                        f"{name} exited with code {child.proc.returncode} after {ran:.0f}s; "
                        f"restarting in {delay:.0f}s"
                    )
                elif now >= self._due[name]:
                    del self._due[name]
                    self.restarts[name] += 1
                    self._start(name)
                    restarted.append(name)
        return restarted

    def watch(self, every: float = 0.5) -> None:
        def loop() -> None:
            while not self._stop.wait(every):
                self.poll()

        self._thread = threading.Thread(target=loop, name="supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 20.0) -> None:
        """Stop restarting, then stop every child (SIGTERM: they finish what is in hand)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            stop_workers(list(self.children.values()), timeout)
            if self.on_exit is not None:
                for name, child in self.children.items():
                    self.on_exit(name, child.proc.pid)
