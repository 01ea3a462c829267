"""How a worker's boards are inspected, through the real servers: each board goes to the sinks
once decided, not held for the rest of its batch; with child processes
(``worker.processes``), a child that dies restarts the worker and loses no board, and
children do not outlive a worker killed outright. (The flow itself, in both modes:
test_flow.py.)"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from infra.kafka_admin import ensure_topics, read_topic
from infra.object_store import ObjectStore
from infra.settings import Settings
from linecheck.bench.e2e import VerdictWatch
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


@pytest.mark.parametrize("processes", [1, 2], ids=["in-process", "2-processes"])
def test_a_decided_board_is_not_held_for_the_rest_of_its_batch(
    settings: Settings, processes: int
) -> None:
    settings.worker.processes = processes
    slow = settings.work_dir / "slow"
    slow.parent.mkdir(parents=True, exist_ok=True)
    slow.write_text("0.4")  # each board 0.4 s longer: the batch's boards decided far apart
    settings.worker.fault_slow_file = slow
    ensure_topics(settings.kafka.bootstrap_servers, settings.topics, settings.kafka.partitions)
    store = ObjectStore(settings.images.object_store)
    publisher = BoardPublisher(
        settings.kafka.bootstrap_servers, settings.topics.flagged, store, inline_max_bytes=10**7
    )
    boards = publish_boards(publisher, store, synthetic_samples(seed=23), 6)
    publisher.flush()  # all in the topic before the worker polls: one batch, or few
    watch = VerdictWatch(settings)
    workers = start_workers(settings, 1, settings.work_dir / "logs")
    try:
        wait_ready(workers)
        watch.wait_for({b.event_id for b in boards}, timeout=120)
    finally:
        stop_workers(workers)
        watch.close()
    last_decided = max(watch.decided.values())
    early = [i for i, sent in watch.seen.items() if sent < last_decided - 0.1]
    # sunk as a whole batch, no verdict of the batch would be out before its last board
    # was decided; board by board, all but the last one or two are (two children finish
    # two boards at a time)
    assert len(early) >= len(boards) - 2, (watch.seen, watch.decided)


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
