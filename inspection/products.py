"""The product registry, kept in the audit store so that every worker sees the same state:
per product, the inspection mode (``reference``: against its aligned template, or the recipe
without one; ``locator``: a learned region network, no template; ``anomaly``: a model of good
images), and the template a board of it is compared with when its event names none. Which
model version serves a product is its model stage (:mod:`inspection.model.stages`): ``set``
with a model promotes it for that product, after checking that the model serves the mode.

Product ``*`` stands for every product without a row of its own; with neither, a product's
boards are dead letters that say how to register it."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, cast

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from infra.db import INSPECTION_MODES, products

Mode = Literal["reference", "locator", "anomaly"]
ALL_PRODUCTS = "*"


class ProductError(ValueError):
    """A registry change that cannot be made; the message says why."""


@dataclass(frozen=True)
class ProductEntry:
    product: str
    mode: Mode
    template_id: str | None = None
    changed_by: str = ""
    changed_at: datetime | None = None
    note: str = ""


def check_mode(mode: str) -> Mode:
    if mode not in INSPECTION_MODES:
        raise ProductError(
            f"unknown inspection mode {mode!r}: one of {', '.join(INSPECTION_MODES)}"
        )
    return cast(Mode, mode)


def registered(
    entries: dict[str, ProductEntry], product: str, model_mode: str, model_version: str
) -> ProductEntry:
    """The product's entry (its own, else ``*``), checked against the mode of the model that
    serves it; a ``ProductError`` saying what to do when there is none or they differ."""
    entry = entries.get(product) or entries.get(ALL_PRODUCTS)
    if entry is None:
        raise ProductError(
            f"product {product!r} is not in the product registry, so linecheck does not know "
            f"how to inspect it: register it with `linecheck products set {product} --mode "
            "reference` (or locator / anomaly, with --model), then replay the dead letter"
        )
    if entry.mode != model_mode:
        raise ProductError(
            f"product {product!r} is registered for {entry.mode} inspection but its model "
            f"{model_version} serves {model_mode}: set a {entry.mode} model with "
            f"`linecheck products set {product} --mode {entry.mode} --model VERSION`"
        )
    return entry


def register_products(url: str, names: list[str], mode: str, who: str, note: str) -> list[str]:
    """:meth:`ProductStore.ensure` on the audit store at ``url``."""
    from infra.db import make_engine

    engine = make_engine(url)
    try:
        return ProductStore(engine).ensure(names, mode, who, note)
    finally:
        engine.dispose()


class ProductStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def entries(self) -> dict[str, ProductEntry]:
        """product → its entry, in one read."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(products).order_by(products.c.product))
            return {
                r.product: ProductEntry(
                    r.product, check_mode(r.mode), r.template_id, r.changed_by, r.changed_at, r.note
                )
                for r in rows
            }

    def set(
        self,
        product: str,
        mode: str,
        who: str,
        template_id: str | None = None,
        note: str = "",
    ) -> ProductEntry | None:
        """Register ``product`` (or change its entry); the entry it had (None: new)."""
        if not product or len(product) > 64:
            raise ProductError(f"product name must be 1 to 64 characters, got {product!r}")
        values = {
            "product": product,
            "mode": check_mode(mode),
            "template_id": template_id,
            "changed_by": who,
            "changed_at": datetime.now(UTC),
            "note": note,
        }
        before = self.entries().get(product)
        stmt = insert(products).values(**values)
        with self.engine.begin() as conn:
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[products.c.product],
                    set_={k: stmt.excluded[k] for k in values if k != "product"},
                )
            )
        return before

    def ensure(self, names: list[str], mode: str, who: str, note: str = "") -> list[str]:
        """Register each of ``names`` not registered yet (never changing an entry an operator
        set); the names it added."""
        check_mode(mode)
        now = datetime.now(UTC)
        rows = [
            {"product": p, "mode": mode, "changed_by": who, "changed_at": now, "note": note}
            for p in dict.fromkeys(names)
        ]
        if not rows:
            return []
        with self.engine.begin() as conn:
            added = conn.execute(
                insert(products).values(rows).on_conflict_do_nothing().returning(products.c.product)
            )
            return [str(p) for p in added.scalars()]

    def remove(self, product: str) -> ProductEntry:
        """Take ``product`` off the registry (its boards become dead letters); its entry."""
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.delete(products).where(products.c.product == product).returning(products)
            ).one_or_none()
        if row is None:
            raise ProductError(f"product {product!r} is not in the registry")
        return ProductEntry(row.product, check_mode(row.mode), row.template_id, row.changed_by)


class ProductView:
    """The registry as a worker holds it: read at start and at every model refresh, and read
    again when a board names a product it does not know, so that a product registered a
    moment ago is inspected rather than dead-lettered: at once when the board was published
    after the last read (at most every ``MIN_GAP_S``), else at most every ``reread_s`` (a
    flood of an unregistered product's boards costs a read per gap, not per board)."""

    MIN_GAP_S = 0.005

    def __init__(self, store: ProductStore, reread_s: float = 1.0) -> None:
        self.store = store
        self.reread_s = reread_s
        self.entries: dict[str, ProductEntry] = {}
        self._read_at = -float("inf")
        self._read_wall = datetime.min.replace(tzinfo=UTC)
        self.refresh()

    def refresh(self) -> None:
        wall, at = datetime.now(UTC), time.monotonic()
        self.entries = self.store.entries()
        self._read_at, self._read_wall = at, wall

    def entry(
        self,
        product: str,
        model_mode: str,
        model_version: str,
        published_at: datetime | None = None,
    ) -> ProductEntry:
        """:func:`registered`, after reading the registry again if the product is unknown."""
        if product not in self.entries and ALL_PRODUCTS not in self.entries:
            since = time.monotonic() - self._read_at
            newer = published_at is not None and published_at > self._read_wall
            if since >= self.reread_s or (newer and since >= self.MIN_GAP_S):
                with contextlib.suppress(sa.exc.SQLAlchemyError):  # unreachable: as we knew it
                    self.refresh()
        return registered(self.entries, product, model_mode, model_version)
