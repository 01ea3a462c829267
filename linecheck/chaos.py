"""`linecheck chaos`: the worst day, repeatable.

Publishes good boards interleaved with hostile messages (``producers.hostile``), and while
they flow: kills workers with SIGKILL (the supervisor restarts them), restarts PostgreSQL,
restarts Redis empty (a flush), and makes one worker slower than Kafka's poll interval for
a while. Then it checks the invariants of at-least-once delivery with idempotent sinks and
reports how long each fault took to recover. With ``--external`` the server restarts are
skipped (they are not ours to restart).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import SecretStr
from rich.console import Console

from infra.db import make_engine, upgrade, verdicts
from infra.images import encode_png
from infra.kafka_admin import ensure_topics
from infra.object_store import ObjectStore
from infra.progress import progress_bar
from infra.settings import Settings
from linecheck.chaos_invariants import ChaosReport, check_invariants
from linecheck.embedded import EmbeddedStack, embedded_stack, start_postgres, start_redis
from linecheck.processes import Supervisor
from producers.hostile import Hostile, hostile_events
from producers.publisher import BoardPublisher
from producers.simulator import synthetic_samples


def chaos_settings(settings: Settings) -> Settings:
    """Small batches and short timeouts, so that faults land mid-batch and a slow worker
    outlasts the poll interval within seconds (the poll budget still holds)."""
    s = settings.model_copy(deep=True)
    s.kafka.batch_size = 4
    s.kafka.session_timeout_ms = 6_000
    s.kafka.max_poll_interval_ms = 15_000
    s.kafka.delivery_timeout_ms = 4_000
    s.postgres.connect_timeout_s = 2
    s.postgres.statement_timeout_ms = 3_000
    s.redis.timeout_s = 0.5
    s.worker.max_board_s = 0.5
    return s


def slow_file(settings: Settings) -> Path:
    """While it exists, worker-1 (only) takes the seconds it holds longer per board."""
    return settings.work_dir / "chaos" / "slow-worker-1"


@contextlib.contextmanager
def _servers(settings: Settings, external: bool) -> Iterator[tuple[Settings, EmbeddedStack | None]]:
    if external:
        yield settings, None
        return
    with embedded_stack(settings.work_dir) as stack:
        live = settings.model_copy(deep=True)
        live.kafka.bootstrap_servers = stack.kafka_bootstrap
        live.postgres.url = SecretStr(stack.postgres_url)
        live.redis.url = SecretStr(stack.redis_url)
        yield live, stack


class _Run:
    """The moving parts of one chaos run, and the faults it injects."""

    def __init__(
        self,
        live: Settings,
        stack: EmbeddedStack | None,
        console: Console,
        probe: Callable[[], list[str]],
    ) -> None:
        self.live = live
        self.stack = stack
        self.console = console
        self.engine = make_engine(live.postgres.url.get_secret_value(), 2)
        self.faults: list[dict[str, Any]] = []
        self.probe = probe  # publishes a few more good boards, returns their event ids

    def audited(self, event_ids: list[str]) -> bool:
        """Whether every one of ``event_ids`` has its audit row (False while it is down)."""
        query = sa.select(sa.func.count()).where(verdicts.c.event_id.in_(event_ids))
        try:
            with self.engine.connect() as conn:
                return int(conn.execute(query).scalar_one()) == len(set(event_ids))
        except sa.exc.SQLAlchemyError:
            return False

    def _recovered(self, what: str, started: float, done: Callable[[], bool], limit: float) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if done():
                took = time.monotonic() - started
                self.faults.append({"fault": what, "recovered": True, "recovery_s": round(took, 1)})
                self.console.log(f"chaos: {what} recovered in {took:.1f}s")
                return
            time.sleep(0.25)
        self.faults.append({"fault": what, "recovered": False, "recovery_s": None})
        self.console.log(f"[red]chaos: {what} not recovered after {limit:.0f}s[/red]")

    def kill_worker(self, supervisor: Supervisor, name: str) -> None:
        child = supervisor.children[name]
        started = time.monotonic()
        os.kill(child.proc.pid, signal.SIGKILL)
        self.console.log(f"chaos: SIGKILL {name} (pid {child.proc.pid})")
        self._recovered(
            f"SIGKILL {name}",
            started,
            lambda: (
                supervisor.children[name] is not child
                and supervisor.children[name].ready_path.exists()
            ),
            90,
        )

    def restart_postgres(self) -> None:
        if self.stack is None:
            self.faults.append({"fault": "restart PostgreSQL", "skipped": "external servers"})
            return
        started = time.monotonic()
        self.stack.postgres.stop()
        self.console.log("chaos: PostgreSQL stopped")
        during = self.probe()  # boards arrive while the audit store is down
        time.sleep(3)
        self.stack.postgres = start_postgres(self.live.work_dir / "pg")
        self.engine.dispose()
        # recovered once the boards of the outage are audited (not "any new row": the
        # stream may have ended, and the held boards may land before a count is taken)
        self._recovered("restart PostgreSQL", started, lambda: self.audited(during), 120)

    def restart_redis(self) -> None:
        if self.stack is None:
            self.faults.append({"fault": "restart and flush Redis", "skipped": "external servers"})
            return
        import redis

        redis_child = next(c for c in self.stack.children if c.name == "redis")
        port = int(self.live.redis.url.get_secret_value().rsplit(":", 1)[1].split("/")[0])
        started = time.monotonic()
        redis_child.stop()
        self.console.log("chaos: Redis stopped")
        time.sleep(2)
        _, fresh = start_redis(self.live.work_dir / "redis", self.live.work_dir / "logs", port)
        self.stack.children[self.stack.children.index(redis_child)] = fresh
        self.probe()  # boards after the flush rebuild the totals, even once the stream ended
        client = redis.Redis.from_url(self.live.redis.url.get_secret_value())
        key = f"{self.live.redis.key_prefix}:totals"
        try:
            self._recovered(
                "restart and flush Redis", started, lambda: bool(client.exists(key)), 90
            )
        finally:
            client.close()

    def slow_worker(self, supervisor: Supervisor, seconds: float, per_board_s: float = 5.0) -> None:
        """worker-1 takes ``per_board_s`` more per board for ``seconds``: a batch outlasts the
        poll interval, the group evicts it and it exits for a restart. Recovered when
        worker-1 holds partitions again (at once when it was never evicted)."""
        path = slow_file(self.live)
        path.parent.mkdir(parents=True, exist_ok=True)
        restarts = supervisor.restarts["worker-1"]
        path.write_text(str(per_board_s))
        self.console.log(f"chaos: worker-1 takes {per_board_s}s more per board for {seconds}s")
        self.probe()
        time.sleep(seconds)
        path.unlink()
        started = time.monotonic()
        # the batch in hand finishes at the slow pace before worker-1 can exit
        time.sleep(self.live.kafka.batch_size * per_board_s)
        self._recovered(
            "worker-1 slower than the poll interval",
            started,
            lambda: (
                supervisor.children["worker-1"].proc.poll() is None
                and supervisor.children["worker-1"].ready_path.exists()
            ),
            120,
        )
        self.faults[-1]["evicted_and_restarted"] = supervisor.restarts["worker-1"] > restarts


def _messages(
    boards: int, hostile: list[Hostile], copies: int, seed: int, console: Console
) -> tuple[list[tuple[str, Any]], list[Hostile]]:
    """Good boards and hostile messages interleaved evenly: ("board", sample) or
    ("hostile", Hostile) items, in publishing order (boards made before the clock starts)."""
    sent_hostile = [h for h in hostile for _ in range(copies)]
    samples = []
    with progress_bar(console, "generating boards", boards) as advance:
        for sample in itertools.islice(synthetic_samples(seed=seed), boards):
            samples.append(sample)
            advance()
    out: list[tuple[str, Any]] = []
    step = max(1, len(samples) // max(1, len(sent_hostile)))
    queue = collections.deque(sent_hostile)
    for i, sample in enumerate(samples):
        out.append(("board", sample))
        if i % step == 0 and queue:
            out.append(("hostile", queue.popleft()))
    out.extend(("hostile", h) for h in queue)
    return out, sent_hostile


def run_chaos(
    settings: Settings,
    *,
    boards: int = 2000,
    hostile: int = 200,
    workers: int = 3,
    rate: float = 40.0,
    slow_s: float = 25.0,
    seed: int = 0,
    external: bool = False,
    console: Console | None = None,
) -> ChaosReport:
    """Run the chaos scenario (see the module docstring) and check its invariants."""
    from board_data.synthetic import BoardGenerator
    from inspection.products import register_products
    from linecheck.processes import wait_ready
    from training.synthetic_model import ensure_model

    console = console or Console(stderr=True)
    if boards < 1 or hostile < 1 or workers < 1 or rate <= 0:
        raise ValueError("boards, hostile and workers must be ≥ 1 and rate > 0")
    ensure_model(settings, console=console)
    started = time.monotonic()
    with _servers(chaos_settings(settings), external) as (live, stack):
        url = live.postgres.url.get_secret_value()
        upgrade(url)
        # every product the run publishes (hostile events name "P"), inspected on templates
        names = [p for k in range(3) for p in BoardGenerator(seed=seed + k).products]
        register_products(url, [*names, "P"], "reference", "chaos", "linecheck chaos")
        ensure_topics(live.kafka.bootstrap_servers, live.topics, live.kafka.partitions)
        store = ObjectStore(live.images.object_store)
        reference = next(synthetic_samples(seed=seed + 1))
        assert reference.template_id is not None and reference.template is not None
        store.put_template(reference.template_id, encode_png(reference.template))
        kinds = hostile_events(store, reference.image, reference.template_id)
        copies = -(-hostile // len(kinds))
        items, sent_hostile = _messages(boards, kinds, copies, seed, console)
        supervisor = Supervisor(live, live.work_dir / "logs", log=console.log)
        for i in range(workers):
            slow = {"LINECHECK_WORKER__FAULT_SLOW_FILE": str(slow_file(live))} if i == 0 else {}
            supervisor.add("worker", f"worker-{i + 1}", LINECHECK_MODEL__THREADS="1", **slow)
        good_ids: list[str] = []
        probes = synthetic_samples(seed=seed + 2)
        prober = BoardPublisher.for_settings(live, store)

        def probe() -> list[str]:
            """A few boards (keys over every partition) after a fault: recovery is seen on
            boards that arrive after it, whatever the stream still holds. Their event ids."""
            sent: list[str] = []
            for _ in range(2 * live.kafka.partitions):
                sample = next(probes)
                assert sample.template_id is not None and sample.template is not None
                store.put_template(sample.template_id, encode_png(sample.template))
                event = prober.publish(
                    sample.image, line="L1", machine="aoi-probe", product=sample.product,
                    board_serial=f"PROBE-{sample.serial}", template_id=sample.template_id,
                )  # fmt: skip
                good_ids.append(event.event_id)
                sent.append(event.event_id)
            prober.flush()
            return sent

        run = _Run(live, stack, console, probe)
        try:
            with console.status("chaos: waiting for the workers to join"):
                wait_ready(list(supervisor.children.values()))
            supervisor.watch()
            publisher = BoardPublisher.for_settings(live, store)
            thread = threading.Thread(
                target=_publish, args=(publisher, store, items, rate, good_ids), daemon=True
            )
            thread.start()
            faults: list[Callable[[], None]] = [
                lambda: run.kill_worker(supervisor, "worker-1"),
                run.restart_postgres,
                lambda: run.kill_worker(supervisor, f"worker-{min(2, workers)}"),
                run.restart_redis,
                lambda: run.kill_worker(supervisor, f"worker-{workers}"),
                lambda: run.slow_worker(supervisor, slow_s),
            ]
            pace = len(items) / rate / (len(faults) + 1)
            for fault in faults:
                time.sleep(min(pace, 5.0))
                fault()
            thread.join()
            publisher.close()
            prober.close()
            report = check_invariants(
                run.live, run.engine, supervisor, good_ids, sent_hostile, len(kinds), console
            )
        finally:
            supervisor.stop()
            run.engine.dispose()
    report.elapsed_s = round(time.monotonic() - started, 1)
    report.faults = run.faults
    report.restarts = dict(supervisor.restarts)
    report.invariants["every_fault_recovered"] = all(f.get("recovered", True) for f in run.faults)
    return report


def _publish(
    publisher: BoardPublisher,
    store: ObjectStore,
    items: list[tuple[str, Any]],
    rate: float,
    good_ids: list[str],
) -> None:
    registered: set[str] = set()
    start = time.monotonic()
    for i, (kind, item) in enumerate(items):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if kind == "hostile":
            publisher.send_raw(item.raw, key=b"hostile")
            continue
        if item.template_id not in registered:
            store.put_template(item.template_id, encode_png(item.template))
            registered.add(item.template_id)
        event = publisher.publish(
            item.image,
            media_type=item.media_type,
            line="L1",
            machine="aoi-1",
            product=item.product,
            board_serial=item.serial,
            template_id=item.template_id,
        )
        good_ids.append(event.event_id)
    publisher.flush()
