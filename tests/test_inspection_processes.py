"""A worker whose boards are inspected by child processes (``worker.processes``), through the
real servers: a child that dies restarts the worker and loses no board; children do not
outlive a worker killed outright. (The flow itself, in both modes: test_flow.py.)"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from infra.kafka_admin import ensure_topics, read_topic
from infra.object_store import ObjectStore
from infra.settings import Settings
from linecheck.processes import start_workers, stop_workers, wait_ready
from producers.publisher import BoardPublisher
from producers.simulator import publish_boards, synthetic_samples
from schemas.events import Verdict
from tests.helpers import wait_until
from workers.inspection_app import EXIT_CHILD_DIED


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"  # a zombie has exited


def _inspectors(worker_pid: int) -> list[int]:
    """The worker's inspection processes (multiprocessing's resource tracker aside)."""
    return [
        c
        for c in _children(worker_pid)
        if "resource_tracker"
        not in Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace")
    ]


def test_a_dead_inspection_process_restarts_the_worker_and_loses_no_board(
    settings: Settings,
) -> None:
    settings.worker.processes = 2
    ensure_topics(settings.kafka.bootstrap_servers, settings.topics, settings.kafka.partitions)
    store = ObjectStore(settings.images.object_store)
    publisher = BoardPublisher(
        settings.kafka.bootstrap_servers, settings.topics.flagged, store, inline_max_bytes=10**7
    )
    logs = settings.work_dir / "logs"
    first = start_workers(settings, 1, logs)
    second = []
    try:
        wait_ready(first)
        inspectors = _inspectors(first[0].proc.pid)
        assert len(inspectors) == 2, inspectors
        os.kill(inspectors[0], signal.SIGKILL)
        boards = publish_boards(publisher, store, synthetic_samples(seed=21), 3)
        publisher.flush()
        # the worker finds its pool broken at the next board and exits for a restart
        assert first[0].proc.wait(60) == EXIT_CHILD_DIED, first[0].tail()
        assert "an inspection process died" in first[0].tail()
        second = start_workers(settings, 1, logs)  # what a supervisor does
        ids = {b.event_id for b in boards}
        out = read_topic(
            settings.kafka.bootstrap_servers,
            settings.topics.verdicts,
            timeout=120,
            until=lambda v: ids <= {Verdict.model_validate_json(x).event_id for x in v},
        )
        assert ids <= {Verdict.model_validate_json(v).event_id for v in out}
    finally:
        stop_workers(first + second)


def test_inspection_processes_do_not_outlive_a_killed_worker(settings: Settings) -> None:
    settings.worker.processes = 2
    ensure_topics(settings.kafka.bootstrap_servers, settings.topics, settings.kafka.partitions)
    workers = start_workers(settings, 1, settings.work_dir / "logs")
    try:
        wait_ready(workers)
        inspectors = _inspectors(workers[0].proc.pid)
        assert len(inspectors) == 2
        # a Ctrl-C or SIGTERM to the whole group is left to the worker: the children stay
        for pid in inspectors:
            os.kill(pid, signal.SIGTERM)
        time.sleep(1.0)
        assert all(_alive(pid) for pid in inspectors)
        workers[0].proc.kill()
        workers[0].proc.wait(10)
        wait_until(lambda: not any(_alive(pid) for pid in inspectors), 15, "orphans gone")
    finally:
        stop_workers(workers)
