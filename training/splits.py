"""Which DeepPCB pairs train and which validate: whole board groups are held out, so a
design is never in both (DeepPCB's split files, or ``DEFAULT_VAL_GROUPS``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from board_data.deeppcb import DeepPcbSample, iter_samples, read_split

if TYPE_CHECKING:
    from inspection.model.registry import ModelCard

DEFAULT_VAL_GROUPS = ("group13000", "group92000")
"""Held-out board designs when no split file is given (309 of the 1,000 pairs)."""


def samples_of(root: Path) -> list[DeepPcbSample]:
    """The pairs ``root/trainval.txt`` lists, or every pair under ``root`` without one."""
    root = Path(root)
    split = root / "trainval.txt"
    return read_split(root, split) if split.is_file() else list(iter_samples(root))


def is_deeppcb(root: Path) -> bool:
    """Whether ``root`` holds pairs in DeepPCB's layout."""
    return any(Path(root).glob("group*/*/*_test.jpg"))


def split_deeppcb(
    samples: Sequence[DeepPcbSample], root: Path, split_file: Path | None
) -> tuple[list[DeepPcbSample], list[DeepPcbSample]]:
    """(train, validation): the split file lists the validation pairs (DeepPCB's split
    format); without one, the board groups of ``DEFAULT_VAL_GROUPS`` are held out. A board
    group is never in both: training drops every pair of a validation group."""
    if split_file is not None:
        val_ids = {s.image_id for s in read_split(root, split_file)}
        val_groups = {s.group for s in samples if s.image_id in val_ids}
    else:
        val_groups = set(DEFAULT_VAL_GROUPS)
        val_ids = {s.image_id for s in samples if s.group in val_groups}
    val = [s for s in samples if s.image_id in val_ids]
    train = [s for s in samples if s.group not in val_groups]
    if not val or not train:
        raise ValueError(f"empty split: {len(train)} training and {len(val)} validation pairs")
    return train, val


def eval_samples(
    root: Path, split_file: Path | None, groups: Sequence[str] = ()
) -> list[DeepPcbSample]:
    """Every pair a split file lists (present under ``root``; no training pairs needed);
    without one, the pairs of ``groups`` (e.g. the model's validation groups, from its card)
    when any are under ``root``, else the default validation groups."""
    if split_file is not None:  # evaluating needs no training pairs: every listed pair
        listed = [s for s in read_split(root, split_file) if s.test_path.exists()]
        if not listed:
            raise ValueError(f"no pair listed in {split_file} is under {root}")
        return listed
    samples = samples_of(root)
    if groups:
        chosen = [s for s in samples if s.group in set(groups)]
        if chosen:
            return chosen
    return split_deeppcb(samples, root, None)[1]


def model_val_groups(card: ModelCard) -> list[str]:
    """The board groups a model was validated on, from its card (empty when unknown)."""
    groups = card.metrics.get("val_groups", [])
    return [str(g) for g in groups] if isinstance(groups, list) else []
