"""What the consumer's fetch wait adds to a quiet line's latency: records produced one at a
time at random (Poisson) intervals to the embedded broker (Tansu) and read back by a consumer
with each ``fetch.wait.max.ms``; per setting, the produce → poll latency percentiles and the
broker's CPU per second while the line is quiet.

    python benchmarks/fetch_wait.py [--waits 1,5,10,25] [--records 400] [--rate 40]
        [--drain 3000 --size 21600]

Tansu can hold a fetch that finds no data for the whole wait even when a record arrives
meanwhile (``workers.delivery.broker_config``), so a longer wait delays records on a quiet
line, and a shorter one costs the broker more empty fetches; this measures both. The
producer is the line publisher's (``producers.publisher.producer_config``: ``linger.ms`` 1);
the latency is from just before ``produce`` to the record returned by ``poll`` (one clock).
``--drain N``: also, per setting, N records of ``--size`` bytes (a bench board's event is
~21.6 kB) published at once, then read by a fresh consumer as fast as it can (``poll``, one
record at a time, as a worker's batch starts): records per second and the polls that found
nothing (a fetch still under way) — what a saturated worker's consumer can take in.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
from confluent_kafka import Consumer, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from linecheck.embedded import start_kafka  # noqa: E402
from producers.publisher import producer_config  # noqa: E402


def new_topic(bootstrap: str, prefix: str) -> tuple[str, AdminClient]:
    """A fresh one-partition topic named ``prefix-<random>``, and the admin client."""
    topic = f"{prefix}-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    return topic, admin


def reader(bootstrap: str, topic: str, wait_ms: int) -> Consumer:
    """A consumer of ``topic`` from its start, in a group of its own, with this fetch wait."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": topic,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": wait_ms,
        }
    )
    consumer.subscribe([topic])
    return consumer


def sent_at(msg: Message) -> float:
    """The ``perf_counter`` the record was produced at (its value)."""
    return float(msg.value() or b"nan")


def probe(
    bootstrap: str, wait_ms: int, records: int, rate: float, broker: psutil.Process
) -> dict[str, float]:
    """One setting: ``records`` single records at Poisson arrivals of ``rate`` per second."""
    topic, admin = new_topic(bootstrap, f"probe-{wait_ms}")
    consumer = reader(bootstrap, topic, wait_ms)
    producer = Producer(producer_config(bootstrap))
    producer.produce(topic, b"warm-up")
    producer.flush(10)
    while (msg := consumer.poll(1.0)) is None or msg.value() != b"warm-up":
        pass
    # the quiet broker's CPU with only this consumer's empty fetches
    cpu0, t0 = broker.cpu_times(), time.monotonic()
    time.sleep(2.0)
    cpu1 = broker.cpu_times()
    idle_cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (time.monotonic() - t0)
    rng = np.random.default_rng(0)
    latencies = []
    for gap in rng.exponential(1.0 / rate, records):
        deadline = time.perf_counter() + gap
        while (msg := consumer.poll(max(0.0, deadline - time.perf_counter()))) is not None:
            latencies.append((time.perf_counter() - sent_at(msg)) * 1e3)
        producer.produce(topic, str(time.perf_counter()).encode())
        producer.poll(0)
    producer.flush(10)
    while len(latencies) < records and (msg := consumer.poll(1.0)) is not None:
        latencies.append((time.perf_counter() - sent_at(msg)) * 1e3)
    consumer.close()
    admin.delete_topics([topic])
    lat = np.array(latencies)
    return {
        "fetch_wait_ms": wait_ms,
        "records": int(lat.size),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p90_ms": round(float(np.percentile(lat, 90)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "mean_ms": round(float(lat.mean()), 2),
        "quiet_broker_cpu_ms_per_s": round(idle_cpu * 1e3, 1),
    }


def drain(bootstrap: str, wait_ms: int, records: int, size: int) -> dict[str, float]:
    """``records`` records of ``size`` bytes published at once, then consumed from the start."""
    topic, admin = new_topic(bootstrap, f"drain-{wait_ms}")
    producer = Producer(producer_config(bootstrap))
    payload = np.random.default_rng(0).bytes(size)
    for _ in range(records):
        producer.produce(topic, payload)
        producer.poll(0)
    producer.flush(30)
    consumer = reader(bootstrap, topic, wait_ms)
    deadline = time.monotonic() + 120
    while (first := consumer.poll(1.0)) is None or first.error():
        if time.monotonic() > deadline:  # the group join, then the first record
            raise TimeoutError(f"no record of {topic} within 120 s")
    start, got, empty = time.perf_counter(), 1, 0
    while got < records:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{records - got} of {records} records of {topic} not read")
        msg = consumer.poll(0.001)
        if msg is None or msg.error():
            empty += 1
            continue
        got += 1
    took = time.perf_counter() - start
    consumer.close()
    admin.delete_topics([topic])
    return {"drain_records_per_s": round((records - 1) / took, 1), "drain_empty_polls": empty}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--waits", default="1,5,10,25", help="fetch.wait.max.ms settings to compare")
    ap.add_argument("--records", type=int, default=400)
    ap.add_argument("--rate", type=float, default=40.0, help="records per second (Poisson)")
    ap.add_argument("--drain", type=int, default=0, help="records read back as fast as possible")
    ap.add_argument("--size", type=int, default=21_600, help="--drain: bytes per record")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as logs:
        bootstrap, child = start_kafka(Path(logs))
        try:
            broker = psutil.Process(child.proc.pid)
            rows = []
            for w in args.waits.split(","):
                row = probe(bootstrap, int(w), args.records, args.rate, broker)
                if args.drain:
                    row.update(drain(bootstrap, int(w), args.drain, args.size))
                rows.append(row)
        finally:
            child.stop()
    print(json.dumps({"rate": args.rate, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
