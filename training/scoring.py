"""DeepPCB pairs through the serving path (ROI → crops → classifier, as a worker runs them),
each with a simulated good twin (its template misregistered and scanned), and the
board-level rates of a set of thresholds on the scores."""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console

from board_data.deeppcb import DeepPcbSample, read_gray
from board_data.scan import simulate_good_board
from infra.progress import progress_bar
from inspection.crops import crops_for
from inspection.roi import find_regions_aligned
from inspection.verdict import board_score, decide, merge_pieces, region_verdicts
from schemas.events import Box, DefectType

if TYPE_CHECKING:
    from inspection.backends.base import Classifier
    from inspection.locator import Locator
    from inspection.model.registry import Thresholds


@dataclass
class PairResult:
    """One DeepPCB pair through the serving path: the board and its simulated good twin."""

    sample: DeepPcbSample
    boxes: list[Box]
    probs: np.ndarray
    good_boxes: list[Box]
    good_probs: np.ndarray
    seconds: float  # ROI + crops + classifier on the board under test
    crops: np.ndarray | None = field(default=None, repr=False)
    image: np.ndarray | None = field(default=None, repr=False)

    @property
    def score(self) -> float:
        return board_score(region_verdicts(self.boxes, self.probs))

    @property
    def good_score(self) -> float:
        return board_score(region_verdicts(self.good_boxes, self.good_probs))

    def detections(self) -> list[tuple[Box, float, DefectType]]:
        return detections_of(self.boxes, self.probs)


def detections_of(boxes: Sequence[Box], probs: np.ndarray) -> list[tuple[Box, float, DefectType]]:
    """Regions the classifier calls a defect: (box, P(type), type), the pieces of one
    defect merged as the worker merges its verdict's regions (:func:`merge_pieces`)."""
    regions = merge_pieces(region_verdicts(boxes, probs))
    return [(r.box, r.type_score, r.defect_type) for r in regions if r.defect_type is not None]


def good_board_rng(image_id: str, seed: int = 0) -> np.random.Generator:
    """The random stream of a pair's simulated good twin: the same for the same pair."""
    return np.random.default_rng([seed, zlib.crc32(image_id.encode())])


def score_pairs(
    samples: Sequence[DeepPcbSample],
    classifier: Classifier,
    console: Console,
    seed: int = 0,
    keep: Callable[[int], bool] = lambda i: False,
    locator: Locator | None = None,
) -> list[PairResult]:
    """Each pair's board (and its simulated good twin) through ROI → crops → classifier,
    as a worker runs them. ``keep(i)`` keeps the crops and image of pair ``i`` (to draw it).

    With ``locator`` (locator mode) the regions come from the board alone and the crops are
    template-free; the template then only makes the good twin, and where any pair's template
    is missing no pair gets a twin (see :func:`makes_twins`)."""
    twins = makes_twins(samples, locator)
    out = []
    what = "inspecting boards" + (" (locator)" if locator is not None else "")
    with progress_bar(console, what, len(samples)) as advance:
        for i, sample in enumerate(samples):
            image = read_gray(sample.test_path)
            template = read_gray(sample.template_path) if twins else None
            t0 = time.perf_counter()
            boxes, reference = _regions(image, template, locator)
            crops = _crops(classifier, image, reference, boxes, locator)
            probs = classifier.predict_proba(crops)
            if locator is not None:
                probs = locator.veto_repeats(image, boxes, probs)
            seconds = time.perf_counter() - t0
            g_boxes: list[Box] = []
            g_probs = np.zeros((0, probs.shape[1]), np.float32)
            if template is not None:
                good = simulate_good_board(template, good_board_rng(sample.image_id, seed))
                g_boxes, g_reference = _regions(good, template, locator)
                g_probs = classifier.predict_proba(
                    _crops(classifier, good, g_reference, g_boxes, locator)
                )
                if locator is not None:
                    g_probs = locator.veto_repeats(good, g_boxes, g_probs)
            kept = keep(i)
            out.append(
                PairResult(
                    sample,
                    boxes,
                    probs,
                    g_boxes,
                    g_probs,
                    seconds,
                    crops if kept else None,
                    image if kept else None,
                )
            )
            advance()
    return out


def makes_twins(samples: Sequence[DeepPcbSample], locator: Locator | None = None) -> bool:
    """Whether :func:`score_pairs` makes simulated good twins: always in reference mode (it
    reads every template anyway), in locator mode only when every pair has its template."""
    return locator is None or all(s.template_path.exists() for s in samples)


def _crops(
    classifier: Classifier,
    image: np.ndarray,
    reference: np.ndarray | None,
    boxes: Sequence[Box],
    locator: Locator | None,
) -> np.ndarray:
    """The classifier's crops of ``boxes``: the locator's template-free ones in locator mode."""
    if locator is not None:
        return locator.crops(classifier, image, boxes)
    return crops_for(classifier, image, reference, boxes)


def _regions(
    image: np.ndarray, template: np.ndarray | None, locator: Locator | None
) -> tuple[list[Box], np.ndarray | None]:
    """Candidate regions and the reference the crops are cut with (None: template-free)."""
    if locator is not None:
        return locator.find_regions(image), None
    assert template is not None  # reference mode reads every pair's template
    return find_regions_aligned(image, template)


def board_arrays(results: Sequence[PairResult]) -> tuple[np.ndarray, np.ndarray]:
    """(scores, defective) over every tested board (defective when its annotation lists a
    defect) and every good twin."""
    scores = [r.score for r in results] + [r.good_score for r in results]
    defective = [bool(r.sample.truths) for r in results] + [False] * len(results)
    return np.asarray(scores), np.asarray(defective, dtype=bool)


def board_rates(
    scores: np.ndarray, defective: np.ndarray, thresholds: Thresholds
) -> dict[str, float | None]:
    """FNR (defective boards passed), FPR (good boards failed) and review rate; a rate
    without boards to count is undefined (None), not 0 or 1."""
    verdicts = np.asarray([decide(thresholds, float(s)).value for s in scores])
    defective = np.asarray(defective, bool)
    n_pos, n_neg = int(defective.sum()), int((~defective).sum())
    return {
        "board_fnr": float((verdicts[defective] == "pass").sum() / n_pos) if n_pos else None,
        "board_fpr": float((verdicts[~defective] == "fail").sum() / n_neg) if n_neg else None,
        "review_rate": float((verdicts == "review").mean()) if len(verdicts) else 0.0,
        "defective_boards": n_pos,
        "good_boards": n_neg,
    }
