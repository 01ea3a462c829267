"""Model stages per product, kept in the audit store so that every worker on every machine
sees the same state: ``candidate`` → ``shadow`` → ``active`` → ``retired``. Product ``*`` is
the default for every product without its own active model. Every change is recorded in
``model_stage_history`` with who made it and when; exactly one model is active per product
(a partial unique index), and a promotion retires the model it replaces in one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from infra.db import MODEL_STAGES, model_stage_history, model_stages

ALL_PRODUCTS = "*"


class StageError(ValueError):
    """A stage change that cannot be made; the message says why."""


@dataclass(frozen=True)
class StageRow:
    product: str
    model_version: str
    stage: str
    changed_by: str
    changed_at: datetime


class StageStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def _set(
        self,
        conn: sa.Connection,
        version: str,
        stage: str,
        product: str,
        who: str,
        note: str,
        now: datetime,
        replacing: bool = False,
    ) -> str | None:
        if stage not in MODEL_STAGES:
            raise StageError(f"unknown stage {stage!r}: one of {', '.join(MODEL_STAGES)}")
        before = conn.execute(
            sa.select(model_stages.c.stage)
            .where(model_stages.c.product == product, model_stages.c.model_version == version)
            .with_for_update()
        ).scalar_one_or_none()
        if before == "active" and stage != "active" and not replacing:
            raise StageError(
                f"{version} is the active model of {product!r}: promote another model "
                "(or roll back) instead"
            )
        stmt = insert(model_stages).values(
            product=product, model_version=version, stage=stage, changed_by=who, changed_at=now
        )
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[model_stages.c.product, model_stages.c.model_version],
                set_={"stage": stage, "changed_by": who, "changed_at": now},
            )
        )
        conn.execute(
            sa.insert(model_stage_history).values(
                product=product,
                model_version=version,
                from_stage=before,
                to_stage=stage,
                changed_by=who,
                changed_at=now,
                note=note,
            )
        )
        return before

    def set_stage(
        self, version: str, stage: str, who: str, product: str = ALL_PRODUCTS, note: str = ""
    ) -> str | None:
        """Put ``version`` in ``stage`` for ``product``; the stage it had (None: new). Use
        :meth:`promote` to make a model active."""
        if stage == "active":
            raise StageError("a model becomes active through promote (it retires the old one)")
        with self.engine.begin() as conn:
            return self._set(conn, version, stage, product, who, note, datetime.now(UTC))

    def promote(
        self, version: str, who: str, product: str = ALL_PRODUCTS, note: str = ""
    ) -> str | None:
        """Make ``version`` the active model of ``product``; the one it replaces (retired)."""
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            # one promotion per product at a time: the others wait here
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(product))))
            old = self._active_in(conn, product)
            if old == version:
                raise StageError(f"{version} is already the active model of {product!r}")
            if old is not None:  # the one place an active model leaves its stage
                self._set(conn, old, "retired", product, who, f"replaced by {version}", now, True)
            self._set(conn, version, "active", product, who, note, now)
            return old

    def rollback(self, who: str, product: str = ALL_PRODUCTS) -> tuple[str, str]:
        """Reactivate the model that was active before the current one: (from, to)."""
        with self.engine.connect() as conn:
            current = self._active_in(conn, product)
            if current is None:
                raise StageError(f"no active model for {product!r} to roll back")
            previous = conn.execute(
                sa.select(model_stage_history.c.model_version)
                .where(
                    model_stage_history.c.product == product,
                    model_stage_history.c.to_stage == "active",
                    model_stage_history.c.model_version != current,
                )
                .order_by(model_stage_history.c.change_id.desc())
                .limit(1)
            ).scalar_one_or_none()
        if previous is None:
            raise StageError(f"{current} has been the only active model of {product!r}")
        self.promote(previous, who, product, note=f"rollback from {current}")
        return current, previous

    @staticmethod
    def _active_in(conn: sa.Connection, product: str) -> str | None:
        return conn.execute(
            sa.select(model_stages.c.model_version).where(
                model_stages.c.product == product, model_stages.c.stage == "active"
            )
        ).scalar_one_or_none()

    def active(self) -> dict[str, str]:
        """product → its active model version."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(model_stages.c.product, model_stages.c.model_version).where(
                    model_stages.c.stage == "active"
                )
            )
            return {str(p): str(v) for p, v in rows}

    def serving(self) -> tuple[dict[str, str], dict[str, list[str]]]:
        """(product → active version, product → shadow versions), in one read."""
        active: dict[str, str] = {}
        shadows: dict[str, list[str]] = {}
        for row in self.rows():
            if row.stage == "active":
                active[row.product] = row.model_version
            elif row.stage == "shadow":
                shadows.setdefault(row.product, []).append(row.model_version)
        return active, shadows

    def in_stage(self, stage: str) -> dict[str, list[str]]:
        """product → the versions in ``stage`` (e.g. the shadows)."""
        out: dict[str, list[str]] = {}
        for row in self.rows():
            if row.stage == stage:
                out.setdefault(row.product, []).append(row.model_version)
        return out

    def rows(self) -> list[StageRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(model_stages).order_by(model_stages.c.product, model_stages.c.changed_at)
            )
            return [StageRow(**r) for r in rows.mappings()]

    def history(self, version: str | None = None) -> list[dict[str, object]]:
        query = sa.select(model_stage_history).order_by(model_stage_history.c.change_id)
        if version is not None:
            query = query.where(model_stage_history.c.model_version == version)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]
