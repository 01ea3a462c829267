"""`linecheck demo --mixed`: one line making three kinds of product, each inspected its own
way through the product registry:

- synthetic boards with golden templates (``SYN-<seed>-d*``): ``reference`` mode, the
  line's default model;
- synthetic boards of new designs that have no template (``SYN-41-d*``, 256 px): ``locator``
  mode, a learned locator and a template-free classifier trained on other boards of them;
- synthetic part surfaces (``TILE-5``, varying sizes, no two alike): ``anomaly`` mode, a
  PatchCore model of good tiles.

The two extra models are trained once into ``model.models_dir`` (about a minute on 2 cores,
with progress bars) and reused afterwards; the summary reports each product's rates.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from board_data.synthetic import BoardGenerator
from board_data.synthetic_tiles import TileGenerator
from infra.images import encode_png
from infra.settings import Settings
from producers.simulator import BoardSample

LOCATOR_SEED, LOCATOR_SIZE, LOCATOR_DESIGNS = 41, 256, 2
ANOMALY_SEED = 5
LOCATOR_VERSION = "mixed-locator-v1"
ANOMALY_VERSION = "mixed-anomaly-v1"
# boards and tiles the models train on; the line's come after these indices
LOCATOR_TRAIN_BOARDS, ANOMALY_TRAIN_TILES = 32, 120
# the line's product mix: two reference boards, then one of each other kind
PATTERN = ("reference", "reference", "locator", "anomaly")


@dataclass(frozen=True)
class MixedModels:
    locator: Path
    anomaly: Path


def ensure_mixed_models(settings: Settings, console: Console) -> MixedModels:
    """The locator-mode and anomaly-mode models of the mixed line, trained if absent."""
    models = settings.model.models_dir
    data = settings.work_dir / "mixed-line-data"
    locator = models / LOCATOR_VERSION
    if not (locator / "model.json").is_file():
        from training.locator_model import train_locator_model

        console.log(f"training {LOCATOR_VERSION}: a locator for boards without templates")
        folder, split = _locator_boards(data / "boards")
        train_locator_model(
            models, folder, split, epochs=2, locator_epochs=15, version=LOCATOR_VERSION,
            console=console,
        )  # fmt: skip
    anomaly = models / ANOMALY_VERSION
    if not (anomaly / "model.json").is_file():
        from training.anomaly_model import train_anomaly

        console.log(f"training {ANOMALY_VERSION}: an anomaly model of good tiles")
        tiles = TileGenerator(seed=ANOMALY_SEED, defect_rate=0.3)
        folder = tiles.write_class_folders(data / "tiles", ANOMALY_TRAIN_TILES)
        train_anomaly(models, folder, "good", version=ANOMALY_VERSION, console=console)
    return MixedModels(locator, anomaly)


def _locator_boards(root: Path) -> tuple[Path, Path]:
    """Boards of the template-less designs in DeepPCB's layout (two board groups, the second
    held out to calibrate), and the split file naming the held-out pairs."""
    from board_data.deeppcb import write_annotations

    gen = _locator_generator(defect_rate=1.0)
    held_out = []
    for i in range(LOCATOR_TRAIN_BOARDS):
        group = "10000" if i < LOCATOR_TRAIN_BOARDS * 3 // 4 else "20000"
        folder, notes = root / f"group{group}" / group, root / f"group{group}" / f"{group}_not"
        folder.mkdir(parents=True, exist_ok=True)
        notes.mkdir(parents=True, exist_ok=True)
        board, stem = gen.board(i), f"{group}{i:03d}"
        (folder / f"{stem}_test.jpg").write_bytes(_jpeg(board.image))
        (folder / f"{stem}_temp.jpg").write_bytes(_jpeg(board.template))
        write_annotations(notes / f"{stem}.txt", board.defects)
        if group == "20000":
            held_out.append(f"group{group}/{group}/{stem}.jpg group{group}/{group}_not/{stem}.txt")
    split = root / "held_out.txt"
    split.write_text("\n".join(held_out) + "\n")
    return root, split


def _jpeg(image: np.ndarray) -> bytes:
    import cv2

    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


def _locator_generator(defect_rate: float = 0.5) -> BoardGenerator:
    return BoardGenerator(
        seed=LOCATOR_SEED, n_designs=LOCATOR_DESIGNS, size=LOCATOR_SIZE, defect_rate=defect_rate
    )


def mixed_samples(reference: Iterator[BoardSample]) -> Iterator[BoardSample]:
    """The line's boards in the order of ``PATTERN``: reference boards from ``reference``,
    template-less boards and tiles the models never saw."""
    boards, tiles = _locator_generator(), TileGenerator(seed=ANOMALY_SEED)
    for i, kind in enumerate(itertools.cycle(PATTERN)):
        if kind == "reference":
            yield next(reference)
        elif kind == "locator":
            b = boards.board(LOCATOR_TRAIN_BOARDS + i)
            yield BoardSample(
                serial=f"NT-{i:07d}", product=b.product, image=encode_png(b.image),
                media_type="image/png", template_id=None, template=None,
                defective=b.defective, n_defects=len(b.defects),
                defect_types=tuple(sorted({d.defect_type.value for d in b.defects})),
            )  # fmt: skip
        else:
            t = tiles.tile(ANOMALY_TRAIN_TILES + i)
            # no defect types: a tile's defect is no PCB defect type, a reviewer confirms
            # "defective" only
            yield BoardSample(
                serial=f"TL-{i:07d}", product=tiles.product, image=encode_png(t.image),
                media_type="image/png", template_id=None, template=None,
                defective=t.defective, n_defects=int(t.defective),
            )  # fmt: skip


def line_modes(seed: int) -> dict[str, str]:
    """Each product of the mixed line (reference boards of generator ``seed``) with its mode."""
    modes = dict.fromkeys(BoardGenerator(seed=seed).products, "reference")
    modes.update(dict.fromkeys(_locator_generator().products, "locator"))
    modes[TileGenerator(seed=ANOMALY_SEED).product] = "anomaly"
    return modes


def register_mixed_line(url: str, modes: dict[str, str], models: MixedModels) -> None:
    """Register each product with its mode and promote its model for it (an operator's entry
    for a product is replaced: the demo's servers are its own unless --external)."""
    from infra.db import make_engine
    from inspection.model.stages import StageError, StageStore
    from inspection.products import ProductStore

    engine = make_engine(url)
    try:
        products, stages = ProductStore(engine), StageStore(engine)
        for product, mode in sorted(modes.items()):
            products.set(product, mode, "demo", note="linecheck demo --mixed")
            model = {"locator": models.locator, "anomaly": models.anomaly}.get(mode)
            if model is not None:
                with contextlib.suppress(StageError):  # already active for it (an earlier run)
                    stages.promote(model.name, "demo", product, note="linecheck demo --mixed")
    finally:
        engine.dispose()
