"""End to end through the broker: N worker processes (`linecheck worker`) in one group
consume pre-serialized boards, write audit rows and publish verdicts; throughput at
saturation and publish-to-verdict latency under open-loop arrivals.

The saturation run spreads its boards evenly over the partitions (round robin): a
line's hashed keys do that over a day, but a worker's share of 400 random keys has a
standard deviation of 2.5 %, the run ends when the busier worker does, and it then
measures the sample, not the pipeline. The
latency run keeps the keyed producer's own choice (each worker's arrivals stay Poisson).

Times come from the messages themselves: a board's publish time is taken when it is handed
to a producer already connected (:func:`warm_producer`), its verdict's is the verdict
message's timestamp (set by the worker's
producer as it sends, after the audit row is written). Same machine, same clock.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from infra.db import upgrade
from infra.kafka_admin import ensure_topics
from infra.settings import Settings
from inspection.products import register_products
from linecheck.bench.cpu import ms_per_board, snapshot
from linecheck.processes import WorkerProcess, start_workers, stop_workers, wait_ready
from producers.publisher import producer_config
from schemas.events import FlaggedBoard


@dataclass(frozen=True)
class E2eRun:
    workers: int
    batch_size: int
    boards: int
    boards_per_s: float  # first publish → last verdict
    per_worker_per_s: float  # each worker's boards / first publish → its last verdict, summed
    latency_ms: list[float]  # publish → verdict, per board
    to_decided_ms: list[float]  # publish → the verdict made (waiting, polling, inspection)
    own_ms: list[float]  # the board's own inspection (its verdict's timings.total_ms)
    published_per_s: float  # first publish → the broker's last ack: the ceiling of the above
    busiest_share: float  # the share of the boards decided by the busiest worker
    steady_per_s: float  # between the 10th and the 90th percentile verdict: no fill or drain
    cpu_ms: dict[str, float]  # CPU ms per board of the workers, broker, … (bench.cpu)


def with_new_ids(events: list[bytes]) -> list[tuple[str, bytes]]:
    """The same boards under fresh event ids (each run's boards are new to the audit
    store: a repeated id would be a cheaper redelivery)."""
    out = []
    for raw in events:
        event = FlaggedBoard.model_validate_json(raw).model_copy(
            update={"event_id": uuid.uuid4().hex}
        )
        out.append((event.event_id, event.model_dump_json().encode()))
    return out


class VerdictWatch:
    """Reads ``boards.verdicts`` from the start (all partitions assigned) and keeps the
    first verdict timestamp and ``decided_at`` of each event id."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topics.verdicts
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka.bootstrap_servers,
                "group.id": f"linecheck-bench-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
            }
        )
        meta = self._consumer.list_topics(self.topic, timeout=30).topics[self.topic]
        self._consumer.assign([TopicPartition(self.topic, p, 0) for p in meta.partitions])
        self.seen: dict[str, float] = {}  # event id → verdict timestamp (s)
        self.decided: dict[str, float] = {}  # event id → the verdict's decided_at (s)
        self.own: dict[str, float] = {}  # event id → its inspection's total ms
        self.worker: dict[str, str] = {}  # event id → the worker that decided it

    def wait_for(self, ids: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ids <= self.seen.keys():
            if time.monotonic() > deadline:
                missing = len(ids - self.seen.keys())
                raise TimeoutError(f"{missing} of {len(ids)} verdicts missing after {timeout}s")
            # a short wait: the CPU snapshot after the last verdict comes soon after it
            for msg in self._consumer.consume(500, 0.02):
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise RuntimeError(f"reading {self.topic}: {error}")
                value = msg.value()
                if value is None:
                    continue
                verdict = json.loads(value)
                event_id = verdict["event_id"]
                if event_id not in self.seen:
                    self.seen[event_id] = msg.timestamp()[1] / 1e3
                    self.decided[event_id] = datetime.fromisoformat(
                        verdict["decided_at"]
                    ).timestamp()
                    self.own[event_id] = float(verdict["timings"]["total_ms"])
                    self.worker[event_id] = str(verdict["worker"])

    def close(self) -> None:
        self._consumer.close()


def publish(
    settings: Settings,
    events: list[tuple[str, bytes]],
    rate: float | None,
    seed: int = 0,
    spread: int | None = None,
    producer: Producer | None = None,
) -> tuple[dict[str, float], float]:
    """Hand ``events`` to a producer, as fast as possible or at Poisson arrivals of mean
    ``rate`` boards/s (open loop: the schedule does not wait for the workers); returns each
    event's publish time and when the broker had acknowledged them all. ``spread``: the
    topic's partitions, to send board k to partition k mod ``spread`` (else the key's).
    ``producer``: one already warm (else one is made and warmed first)."""
    producer = producer or warm_producer(settings)
    gaps = (
        np.random.default_rng(seed).exponential(1.0 / rate, len(events))
        if rate
        else np.zeros(len(events))
    )
    due = time.time()
    sent: dict[str, float] = {}
    for k, ((event_id, value), gap) in enumerate(zip(events, gaps, strict=True)):
        due += float(gap)
        wait = due - time.time()
        if wait > 0:
            time.sleep(wait)
        while True:
            try:
                producer.produce(
                    settings.topics.flagged,
                    value=value,
                    key=event_id.encode(),
                    partition=-1 if spread is None else k % spread,  # -1: the key decides
                )
                break
            except BufferError:
                producer.poll(0.05)
        sent[event_id] = time.time()
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("the broker did not acknowledge every bench board")
    return sent, time.time()


def warm_producer(settings: Settings) -> Producer:
    """A producer already connected, with its idempotent producer id: a fresh one takes
    about a second to deliver its first message, which would be charged to the workers."""
    producer = Producer(producer_config(settings.kafka.bootstrap_servers))
    producer.produce(f"{settings.kafka.topic_prefix}bench.warmup", value=b"warm-up")
    if producer.flush(30):
        raise RuntimeError("the broker did not acknowledge the bench producer's warm-up")
    return producer


@contextmanager
def worker_group(
    live: Settings, workers: int, batch_size: int, run: str
) -> Iterator[tuple[Settings, list[WorkerProcess]]]:
    """``workers`` worker processes on topics and a group of their own (``run`` names them),
    ready (model loaded, partitions held) when entered; stopped after."""
    settings = live.model_copy(deep=True)
    settings.kafka.topic_prefix = f"bench-{run}."
    settings.kafka.group_id = f"bench-{run}"
    settings.kafka.batch_size = batch_size
    ensure_topics(settings.kafka.bootstrap_servers, settings.topics, settings.kafka.partitions)
    procs = start_workers(settings, workers, Path(settings.work_dir) / "logs" / f"bench-{run}")
    try:
        wait_ready(procs)
        yield settings, procs
    finally:
        stop_workers(procs)


def measure(
    settings: Settings,
    watch: VerdictWatch,
    events: list[bytes],
    rate: float | None,
    workers: set[int],
) -> E2eRun:
    """Publish ``events`` to the group's workers (``workers``: their pids) and time them
    (:class:`E2eRun`): as fast as possible (a saturation run, the boards spread evenly over
    the partitions) or at Poisson arrivals of mean ``rate`` boards/s. The workers' summed
    rate charges each worker only for its own span (first publish → its last verdict), as
    the raw figure sums its processes; the steady rate is the one between the 10th and 90th
    percentile verdict (the pipeline full: no fill at the start, no drain at the end)."""
    batch = with_new_ids(events)
    producer = warm_producer(settings)
    before = snapshot(workers)
    spread = None if rate else settings.kafka.partitions
    sent, acked = publish(settings, batch, rate, spread=spread, producer=producer)
    watch.wait_for(set(sent), timeout=120 + 2.0 * len(batch))
    cpu = ms_per_board(before, snapshot(workers), len(batch))
    start = min(sent.values())
    done = [watch.seen[i] for i in sent]
    shares = Counter(watch.worker[i] for i in sent)
    last: dict[str, float] = {}
    for i in sent:
        last[watch.worker[i]] = max(last.get(watch.worker[i], start), watch.seen[i])
    t10, t90 = np.percentile(done, [10, 90])
    return E2eRun(
        workers=len(workers),
        batch_size=settings.kafka.batch_size,
        boards=len(batch),
        boards_per_s=len(batch) / (max(done) - start),
        per_worker_per_s=sum(n / max(1e-9, last[w] - start) for w, n in shares.items()),
        latency_ms=[(watch.seen[i] - t) * 1e3 for i, t in sent.items()],
        to_decided_ms=[(watch.decided[i] - t) * 1e3 for i, t in sent.items()],
        own_ms=[watch.own[i] for i in sent],
        published_per_s=len(batch) / max(1e-9, acked - start),
        busiest_share=max(shares.values()) / len(batch),
        steady_per_s=0.8 * len(batch) / max(1e-9, float(t90 - t10)),
        cpu_ms=cpu,
    )


def e2e_runs(
    live: Settings,
    events: list[bytes],
    workers: int,
    batch_size: int,
    run: str,
    latency_at: float | None = None,
) -> tuple[E2eRun, E2eRun | None]:
    """Saturation run (every board published at once) and, with ``latency_at`` (a fraction
    of the saturation rate), an open-loop run at that rate on the same workers."""
    url = live.postgres.url.get_secret_value()
    upgrade(url)
    products = sorted({json.loads(e)["product"] for e in events})
    register_products(url, products, "reference", "bench", "linecheck bench")
    with worker_group(live, workers, batch_size, run) as (settings, procs):
        watch = VerdictWatch(settings)
        pids = {p.proc.pid for p in procs}
        try:
            saturated = measure(settings, watch, events, None, pids)
            paced = None
            if latency_at is not None:
                rate = saturated.per_worker_per_s * latency_at
                paced = measure(settings, watch, events, rate, pids)
        finally:
            watch.close()
    return saturated, paced
