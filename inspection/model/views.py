"""Models of several views: one network per crop geometry, their probabilities averaged.

A region's crop is a square around its box, resized to the network's input; cut from the box
and its context alone, a small defect fills the crop, and cut from at least N px of board it
keeps its surroundings (whether a bite is in a pad or a trace). Networks of the two geometries
err on different board designs, so a model may hold one of each: ``<version>/view<side>/``
are complete model folders, and the top ``model.json`` (``ModelCard.views``) holds the
thresholds of their mean probabilities. Served by
:class:`inspection.backends.views_backend.ViewsClassifier`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from inspection.model.registry import (
    CARD_FILE,
    ModelCard,
    assembled,
    load_card,
    new_model,
    save_model,
)

if TYPE_CHECKING:
    from torch import nn


def view_dirs(model_dir: Path, card: ModelCard | None = None) -> list[Path]:
    """The folders of a model's networks: its views' (``view<side>/``, in the card's
    order), or the folder itself for a one-network model."""
    model_dir = Path(model_dir)
    card = card or load_card(model_dir)
    return [model_dir / f"view{side}" for side in card.views] or [model_dir]


def save_views(
    members: list[tuple[nn.Module, ModelCard]], card: ModelCard, models_dir: Path
) -> Path:
    """Write a model of views as ``<models_dir>/<card.version>/``: each (module, card) of
    ``members`` saved as ``view<side>/`` (in ``card.views``' order) beside the top ``card``;
    assembled under a temporary name like :func:`save_model`. Returns the folder."""
    sides = tuple(m.crop_min_side for _, m in members)
    if sides != card.views:
        raise ValueError(
            f"the members cut crops from {sides} px, the card's views are {card.views}"
        )
    final, card = new_model(models_dir, card)
    with assembled(final) as tmp:
        for module, member in members:
            save_model(
                module, member.model_copy(update={"version": f"view{member.crop_min_side}"}), tmp
            )
        (tmp / CARD_FILE).write_text(card.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return final
