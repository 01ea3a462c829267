"""Small helpers shared by the flow tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from schemas.events import StageTimings, Verdict


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; fail the test naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def make_verdict(event_id: str, verdict: str = "pass", **kw: object) -> Verdict:
    """A valid verdict on line L1 for sink and store tests; ``kw`` overrides fields."""
    base: dict[str, object] = dict(
        event_id=event_id,
        line="L1",
        machine="aoi-1",
        product="P1",
        board_serial=f"S-{event_id}",
        verdict=verdict,
        board_score=0.1,
        regions=[],
        roi_method="reference",
        model_version="m1",
        threshold_version="t1",
        pass_below=0.3,
        fail_at_or_above=0.7,
        timings=StageTimings(),
        worker="w1",
        inspected_at=datetime.now(UTC),
    )
    base.update(kw)
    return Verdict(**base)  # type: ignore[arg-type]
