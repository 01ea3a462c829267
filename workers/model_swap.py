"""Hot swap: a worker follows the model stages in the audit store (``linecheck models
promote`` / ``rollback``) and switches models between batches, without a restart; the product
registry (``linecheck products``) is read at the same pace.

Every ``model.refresh_s`` the handler asks the stages which version is active for ``*``
(every product) and for each product with its own, and which are shadows; a version not
loaded yet is loaded (from ``model.models_dir``), then the inspector serves the new set from
the next batch on.
A stage lookup or a load that fails keeps the models being served: the line never stops
for a registry problem. Each verdict names the model and thresholds that decided it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import sqlalchemy as sa

from infra.settings import Settings
from inspection.model.stages import ALL_PRODUCTS, StageStore
from workers import metrics
from workers.inspector import Inspector
from workers.served import ServedModel, load_served

log = logging.getLogger("linecheck.worker.models")


class ModelSwapper:
    def __init__(
        self,
        stages: StageStore,
        load: Callable[[str], ServedModel],
        refresh_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stages = stages
        self.load = load  # version → served model (raises when it cannot)
        self.refresh_s = refresh_s
        self.clock = clock
        self._loaded: dict[str, ServedModel] = {}
        self._serving: dict[str, str] = {}
        self._shadowing: dict[str, list[str]] = {}
        self._next = 0.0

    @classmethod
    def for_settings(cls, settings: Settings, engine: sa.Engine) -> ModelSwapper:
        models_dir = settings.model.models_dir
        return cls(
            StageStore(engine),
            lambda version: load_served(settings, models_dir / version),
            settings.model.refresh_s,
        )

    def adopt(self, version: str, model: ServedModel) -> None:
        """The model the worker started with (the settings' version)."""
        self._loaded[version] = model
        self._serving = {ALL_PRODUCTS: version}

    def refresh(self, inspector: Inspector) -> bool:
        """Serve what the stages say, at most every ``refresh_s``; True when it switched."""
        now = self.clock()
        if now < self._next:
            return False
        self._next = now + self.refresh_s
        try:
            if inspector.products is not None:  # the product registry, at the same pace
                inspector.products.refresh()
            active, shadows = self.stages.serving()
        except sa.exc.SQLAlchemyError as exc:
            log.warning("model stages or products unavailable, serving what we have: %s", exc)
            return False
        wanted = {ALL_PRODUCTS: self._serving.get(ALL_PRODUCTS, ""), **active}
        if wanted == self._serving and shadows == self._shadowing:
            return False
        needed = set(wanted.values()) | {v for vs in shadows.values() for v in vs}
        try:
            for version in needed - set(self._loaded):
                self._loaded[version] = self.load(version)
        except Exception as exc:  # a missing or broken model folder: keep serving
            log.error("cannot load models %s, serving what we have: %s", sorted(needed), exc)
            return False
        default = self._loaded[wanted[ALL_PRODUCTS]]
        overrides = {p: self._loaded[v] for p, v in wanted.items() if p != ALL_PRODUCTS}
        shadowing = {p: [self._loaded[v] for v in vs] for p, vs in shadows.items()}
        inspector.serve(default, overrides, shadowing)
        log.info("now serving %s, shadows %s (was %s)", wanted, shadows, self._serving)
        metrics.MODEL_SWAPS.inc()
        self._serving, self._shadowing = wanted, shadows
        # keep only what is served: a retired model's memory goes back
        self._loaded = {v: m for v, m in self._loaded.items() if v in needed}
        return True
