"""The inspector a worker serves with, built in the worker's own process or in each of
``worker.processes`` child processes that take boards from one queue.

Why child processes: Kafka pins a partition's boards to the one consumer that holds it, so
with one inspecting process per consumer a board waits behind its own partitions' boards
while another worker idles (each worker its own M/G/1 queue). One consumer feeding N child
processes is one M/G/N queue: a board waits only while all N are busy. Threads
(``worker.inspect_threads``) share the GIL; processes do not. Each child loads the model, the
product registry and the model-stage follower once, as an in-process worker does; the
consumer, the sinks and the offsets stay in the worker's process (the same delivery
guarantee: offsets stored in poll order, only after both sinks).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import Any

from infra.object_store import ObjectStore
from infra.settings import Settings
from schemas.events import DeadLetter, Verdict
from workers.batch_inspection import inspect_batch
from workers.inspector import Inspector, SourceInfo
from workers.messages import dead_letter, default_worker_name
from workers.model_swap import ModelSwapper, load_served

log = logging.getLogger("linecheck.worker")
Result = Verdict | DeadLetter
Letters = Callable[[bytes, SourceInfo, str, str, str | None], DeadLetter]


def build_inspector(settings: Settings) -> Inspector:
    """The per-event code with the configured model, explainer, store and image policy
    (heavy: once per process). `linecheck inspect` runs it without any server."""
    from inspection.model.registry import resolve_model

    if settings.model.threads is not None:
        import cv2

        # OpenCV's own thread pool gains nothing on the ROI stage and, with one worker per
        # core, makes the workers fight over the cores (2 workers on 2 cores: 25 boards/s
        # with OpenCV's default threads, 43 with one each; benchmarks/pipeline.py).
        cv2.setNumThreads(settings.model.threads)
    served = load_served(settings, resolve_model(settings.model.models_dir, settings.model.version))
    inspector = Inspector(
        served.classifier,
        served.thresholds,
        ObjectStore(settings.images.object_store),
        worker=settings.worker.name or default_worker_name(),
        explainer=served.explainer,
        policy=settings.images.policy,
        review_products=frozenset(settings.worker.review_products),
        dead_letter_inline_max=settings.images.inline_max_bytes,
        audit_rate=settings.quality.audit_rate,
        anomaly=served.anomaly,
    )
    inspector.default = served  # with its locator, if any
    return inspector


def build_serving(settings: Settings) -> tuple[Inspector, ModelSwapper | None]:
    """The inspector with the product registry, and the follower of the model stages
    (None when ``model.refresh_s`` is 0): what inspects boards in a worker."""
    from infra.db import make_engine
    from inspection.products import ProductStore, ProductView

    inspector = build_inspector(settings)
    engine = make_engine(
        settings.postgres.url.get_secret_value(),
        settings.postgres.connect_timeout_s,
        settings.postgres.statement_timeout_ms,
    )
    # the product registry: how each product is inspected (unregistered: dead letters)
    inspector.products = ProductView(ProductStore(engine))
    swapper = None
    if settings.model.refresh_s > 0:
        swapper = ModelSwapper.for_settings(settings, engine)
        swapper.adopt(inspector.default.version, inspector.default)
    return inspector, swapper


def letter_writer(settings: Settings) -> Letters:
    """Dead letters as this worker's inspector writes them, for a process without one."""
    store = ObjectStore(settings.images.object_store)

    def write(
        raw: bytes, source: SourceInfo, stage: str, reason: str, event_id: str | None
    ) -> DeadLetter:
        return dead_letter(
            raw,
            topic=source.topic,
            partition=source.partition,
            offset=source.offset,
            key=source.key,
            stage=stage,
            reason=reason,
            event_id=event_id,
            worker=settings.worker.name or default_worker_name(),
            store=store,
            inline_max_bytes=settings.images.inline_max_bytes,
        )

    return write


# A child's inspector and model follower, built once by _start_child.
_child: dict[str, Any] = {}


def _start_child(settings: Settings, ready: Any, timeout_s: float, parent: int) -> None:
    """A child's start: load what inspects (``ready``: the barrier that every child and the
    worker pass once all are loaded; broken at once when this one cannot load).

    The worker decides when its children stop (after its last batch's sinks): a Ctrl-C or a
    SIGTERM sent to the whole process group is left to it. A child whose worker is gone
    (killed outright) exits by itself instead of waiting for boards forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    try:
        inspector, swapper = build_serving(settings)
    except BaseException:
        ready.abort()
        raise
    _child.update(inspector=inspector, swapper=swapper)
    ready.wait(timeout_s)


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _inspect_one(body: bytes, source: SourceInfo, delay_s: float) -> tuple[Result, list[Any]]:
    """One board in a child: its result and the shadow models' decisions on it."""
    inspector: Inspector = _child["inspector"]
    swapper: ModelSwapper | None = _child["swapper"]
    if swapper is not None:
        swapper.refresh(inspector)
    (result,) = inspect_batch(
        inspector, [body], [source], (lambda: time.sleep(delay_s)) if delay_s else None
    )
    return result, inspector.take_shadow_decisions()


class InspectionProcesses:
    """``count`` child processes inspecting boards from one queue, first come first served."""

    def __init__(self, settings: Settings, count: int, start_timeout_s: float = 300.0) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        ready = context.Barrier(count + 1)
        self.count = count
        self._pool = ProcessPoolExecutor(
            count,
            mp_context=context,
            initializer=_start_child,
            initargs=(settings, ready, start_timeout_s, os.getpid()),
        )
        # the executor starts its children with the first task; each waits at the barrier
        for _ in range(count):
            self._pool.submit(int)
        try:
            ready.wait(start_timeout_s)
        except threading.BrokenBarrierError as exc:
            self._pool.shutdown(cancel_futures=True)
            raise RuntimeError(
                f"{count} inspection processes did not load the model within "
                f"{start_timeout_s:.0f}s, or one of them failed (see the worker's log)"
            ) from exc
        log.info("%d inspection processes ready", count)

    async def inspect(
        self, bodies: Sequence[bytes], sources: Sequence[SourceInfo], delay_s: float = 0.0
    ) -> tuple[list[Result], list[Any]]:
        """Each board on the first free child; results in the order of ``bodies``, and the
        shadow models' decisions."""
        futures = [
            asyncio.wrap_future(self._pool.submit(partial(_inspect_one, b, s, delay_s)))
            for b, s in zip(bodies, sources, strict=True)
        ]
        done = await asyncio.gather(*futures)
        return [r for r, _ in done], [d for _, ds in done for d in ds]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
