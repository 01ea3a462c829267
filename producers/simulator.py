"""A line simulator: publishes N flagged boards at a given rate, from the synthetic
generator or from a folder in DeepPCB's layout, and remembers the ground truth."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infra.images import encode_png
from infra.object_store import ObjectStore
from producers.publisher import BoardPublisher


@dataclass(frozen=True)
class BoardSample:
    """One board as the line sees it, with the truth a simulator knows (and a line does not)."""

    serial: str
    product: str
    image: bytes
    media_type: str
    template_id: str | None
    template: np.ndarray | None
    defective: bool
    n_defects: int
    defect_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class PublishedBoard:
    event_id: str
    serial: str
    product: str
    defective: bool
    n_defects: int
    defect_types: tuple[str, ...] = ()


# The process change `linecheck demo --drift` injects part-way: noisier scans (3% speckle
# instead of 0.2%) and more misregistration (up to 12 px and 2° instead of 2 px and 0.3°).
DRIFTED_SCAN = {"noise": 0.03, "max_shift_px": 12.0, "max_rotation_deg": 2.0}


def synthetic_samples(
    seed: int = 0,
    defect_rate: float = 0.5,
    n_designs: int = 4,
    drift_from: int | None = None,
) -> Iterator[BoardSample]:
    """Synthetic boards; from board `drift_from` on (if given) scanned under DRIFTED_SCAN."""
    from board_data.synthetic import BoardGenerator, ScanConditions

    gen = BoardGenerator(seed=seed, n_designs=n_designs, defect_rate=defect_rate)
    drifted = BoardGenerator(
        seed=seed, n_designs=n_designs, defect_rate=defect_rate, scan=ScanConditions(**DRIFTED_SCAN)
    )
    for index in itertools.count():
        source = drifted if drift_from is not None and index >= drift_from else gen
        board = source.board(index)
        yield BoardSample(
            serial=f"SYN{seed:03d}-{index:07d}",
            product=board.product,
            image=encode_png(board.image),
            media_type="image/png",
            template_id=board.template_id,
            template=board.template,
            defective=board.defective,
            n_defects=len(board.defects),
            defect_types=tuple(sorted({d.defect_type.value for d in board.defects})),
        )


def deeppcb_samples(root: Path) -> Iterator[BoardSample]:
    """DeepPCB pairs: each tested image is defective; its template is the defect-free board."""
    import cv2

    from board_data.deeppcb import iter_samples

    for sample in iter_samples(root):
        template = cv2.imread(str(sample.template_path), cv2.IMREAD_GRAYSCALE)
        if template is None:
            raise ValueError(f"cannot read template image {sample.template_path}")
        yield BoardSample(
            serial=f"DPCB-{sample.image_id}",
            product=f"deeppcb-{sample.group}",
            image=sample.test_path.read_bytes(),  # published as the line scanned it (JPEG)
            media_type="image/jpeg",
            template_id=f"deeppcb-{sample.image_id}",
            template=template,
            defective=bool(sample.truths),
            n_defects=len(sample.truths),
        )


def publish_boards(
    publisher: BoardPublisher,
    store: ObjectStore,
    samples: Iterator[BoardSample],
    count: int,
    *,
    rate: float | None = None,
    line: str = "L1",
    machine: str = "aoi-1",
    on_published: Callable[[int], None] | None = None,
) -> list[PublishedBoard]:
    """Publish `count` boards (at `rate` boards/s if given) and wait for the broker's acks."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be > 0 boards/s, got {rate}")
    published: list[PublishedBoard] = []
    registered: set[str] = set()
    start = time.monotonic()
    for i, sample in enumerate(itertools.islice(samples, count)):
        if (
            sample.template_id
            and sample.template is not None
            and sample.template_id not in registered
        ):
            store.put_template(sample.template_id, encode_png(sample.template))
            registered.add(sample.template_id)
        if rate is not None:  # pace like a line: board i leaves at start + i / rate
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        event = publisher.publish(
            sample.image,
            media_type=sample.media_type,
            line=line,
            machine=machine,
            product=sample.product,
            board_serial=sample.serial,
            template_id=sample.template_id,
        )
        published.append(
            PublishedBoard(
                event.event_id,
                sample.serial,
                sample.product,
                sample.defective,
                sample.n_defects,
                sample.defect_types,
            )
        )
        if on_published is not None:
            on_published(i + 1)
    publisher.flush()
    return published
