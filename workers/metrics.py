"""Prometheus metrics of a worker (scraped at `worker.metrics_port` when set).

Under `linecheck up` every process writes them to PROMETHEUS_MULTIPROC_DIR and the web
server's /metrics serves the whole group: gauges say how to combine processes."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from schemas.events import Verdict

VERDICTS = Counter("linecheck_verdicts_total", "Verdicts published", ["line", "verdict"])
DEADLETTERS = Counter("linecheck_deadletters_total", "Messages dead-lettered", ["stage"])
SINK_FAILURES = Counter("linecheck_sink_failures_total", "Audit/Redis/publish failures (retried)")
DUPLICATES = Counter("linecheck_duplicate_events_total", "Redelivered events already audited")
STAGE_SECONDS = Histogram(
    "linecheck_stage_seconds",
    "Time per board in each stage",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
REGIONS = Histogram(
    "linecheck_regions_per_board",
    "Candidate regions per board",
    buckets=(0, 1, 2, 4, 8, 16, 32, 64),
)
REDIS_FAILURES = Counter(
    "linecheck_live_counter_failures_total",
    "Batches whose Redis counters could not be written (the line went on; "
    "`linecheck stats rebuild` repairs them)",
)
CONFLICTS = Counter(
    "linecheck_event_conflicts_total", "Events reusing an id already decided for another payload"
)
POLL_OVERRUNS = Counter(
    "linecheck_poll_overruns_total",
    "Batches that outlasted max.poll.interval.ms (the worker then exits for a restart)",
)
MODEL_SWAPS = Counter(
    "linecheck_model_swaps_total", "Times a worker switched models after a stage change"
)
ASSIGNED = Gauge(
    "linecheck_assigned_partitions",
    "Partitions of boards.flagged held",
    multiprocess_mode="livesum",
)
MODEL_LOADED = Gauge(
    "linecheck_model_loaded",
    "Workers with their model loaded (1 per worker)",
    multiprocess_mode="livesum",
)


def observe(verdict: Verdict, new: bool) -> None:
    if not new:
        DUPLICATES.inc()
        return
    VERDICTS.labels(verdict.line, verdict.verdict.value).inc()
    t = verdict.timings
    for stage, ms in (
        ("decode", t.decode_ms),
        ("roi", t.roi_ms),
        ("classify", t.classify_ms),
        ("total", t.total_ms),
    ):
        STAGE_SECONDS.labels(stage).observe(ms / 1e3)
    REGIONS.observe(len(verdict.regions))


def serve(port: int) -> None:
    start_http_server(port, addr="0.0.0.0")
