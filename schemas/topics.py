"""Topic names, in one place. Every part of linecheck takes them from here (or settings)."""

from pydantic import BaseModel, ConfigDict


class Topics(BaseModel):
    """The Kafka topics of the flow; a prefix lets several lines or tests share a broker."""

    model_config = ConfigDict(frozen=True)

    flagged: str = "boards.flagged"
    verdicts: str = "boards.verdicts"
    reviews: str = "boards.reviews"
    deadletter: str = "boards.deadletter"
    alerts: str = "boards.alerts"

    def with_prefix(self, prefix: str) -> "Topics":
        """The same topics under `prefix` (e.g. a test's unique namespace)."""
        if not prefix:
            return self
        return Topics(**{name: f"{prefix}{value}" for name, value in self.model_dump().items()})

    def all(self) -> list[str]:
        return list(self.model_dump().values())
