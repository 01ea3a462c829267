"""Backing off after sink failures, so that an outage is a slow retry, not a busy loop."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backoff:
    """Exponential delay after consecutive sink failures: 0.25 s doubling to `cap`."""

    cap: float = 10.0
    failures: int = 0

    def failed(self) -> float:
        self.failures += 1
        return min(self.cap, 0.25 * 2 ** (self.failures - 1))

    def reset(self) -> None:
        self.failures = 0
