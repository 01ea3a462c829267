"""Child processes of linecheck (workers, the review sink) started, watched and stopped.

Each child is ``python -m linecheck COMMAND`` configured through the environment (the
parent's settings as ``LINECHECK_*`` variables), logging to ``NAME.log`` and touching
``NAME.ready`` once it holds its partitions.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
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
    with log_path.open("wb") as log:
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
