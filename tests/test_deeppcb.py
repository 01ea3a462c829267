"""DeepPCB's folder layout, annotation, split and detection files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from board_data.deeppcb import (
    iter_samples,
    read_annotations,
    read_detections,
    read_split,
    write_annotations,
    write_detections,
)
from board_data.synthetic import BoardGenerator
from schemas.events import Box, DefectType, GroundTruth

DEEPPCB = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "deeppcb"


def _write_pair(root: Path, group: str, image_id: str, truths: list[GroundTruth]) -> None:
    folder = root / f"group{group}" / group
    notes = root / f"group{group}" / f"{group}_not"
    folder.mkdir(parents=True, exist_ok=True)
    notes.mkdir(parents=True, exist_ok=True)
    board = BoardGenerator(seed=1, n_designs=1, defect_rate=0.0, size=128).board(0)
    cv2.imwrite(str(folder / f"{image_id}_test.jpg"), board.image)
    cv2.imwrite(str(folder / f"{image_id}_temp.jpg"), board.template)
    write_annotations(notes / f"{image_id}.txt", truths)


def test_round_trip_of_layout_split_and_annotations(tmp_path: Path) -> None:
    truths = [
        GroundTruth(Box(x1=10, y1=20, x2=40, y2=55), DefectType.OPEN),
        GroundTruth(Box(x1=70, y1=5, x2=99, y2=33), DefectType.PIN_HOLE),
    ]
    _write_pair(tmp_path, "12000", "12000001", truths)
    _write_pair(tmp_path, "12000", "12000002", truths[:1])
    _write_pair(tmp_path, "34000", "34000007", truths[1:])
    (tmp_path / "group12000" / "12000" / "12000009_test.jpg").write_bytes(b"")  # no pair

    samples = list(iter_samples(tmp_path))
    assert [s.image_id for s in samples] == ["12000001", "12000002", "34000007"]
    first = samples[0]
    assert first.group == "group12000" and first.truths == tuple(truths)
    assert first.test_path.name == "12000001_test.jpg"
    assert first.template_path.name == "12000001_temp.jpg"
    board, template = first.load()
    assert board.shape == template.shape == (128, 128) and board.dtype == np.uint8

    split = tmp_path / "test.txt"
    split.write_text(
        "group34000/34000/34000007.jpg group34000/34000_not/34000007.txt\n\n"
        "group12000/12000/12000002.jpg group12000/12000_not/12000002.txt\n"
    )
    listed = read_split(tmp_path, split)
    assert [s.image_id for s in listed] == ["34000007", "12000002"]
    assert listed[0] == samples[2]


def test_comma_separated_annotations_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("1,2,30,40,2\n5 6 50 60 6\n\n")
    assert read_annotations(path) == (
        GroundTruth(Box(x1=1, y1=2, x2=30, y2=40), DefectType.SHORT),
        GroundTruth(Box(x1=5, y1=6, x2=50, y2=60), DefectType.PIN_HOLE),
    )


@pytest.mark.parametrize(
    "line", ["1 2 30 40", "1 2 30 40 7", "1 2 x 40 3", "30 2 1 40 3", "1 2 30 40 3 9"]
)
def test_malformed_annotation_names_file_and_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(f"1 2 30 40 1\n{line}\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2: malformed annotation"):
        read_annotations(path)


def test_malformed_split_line(tmp_path: Path) -> None:
    split = tmp_path / "split.txt"
    split.write_text("group1/1/1.jpg\n")
    with pytest.raises(ValueError, match=r"split\.txt:1: expected"):
        read_split(tmp_path, split)


def test_detection_file_round_trip_in_evaluation_format(tmp_path: Path) -> None:
    detections = [
        (Box(x1=1, y1=2, x2=30, y2=40), 0.875, DefectType.MOUSEBITE),
        (Box(x1=5, y1=6, x2=50, y2=60), 1.0, DefectType.PIN_HOLE),
    ]
    path = tmp_path / "12000001.txt"
    write_detections(path, detections)
    assert path.read_text().splitlines() == [
        "1,2,30,40,0.875000,mousebite",
        "5,6,50,60,1.000000,pin-hole",
    ]
    assert read_detections(path) == detections
    with pytest.raises(ValueError, match="confidence"):
        write_detections(path, [(detections[0][0], 1.5, DefectType.OPEN)])
    path.write_text("1,2,30,40,0.5,scratch\n")
    with pytest.raises(ValueError, match=r"12000001\.txt:1: malformed detection"):
        read_detections(path)


def test_real_deeppcb_folder_reads() -> None:
    if not DEEPPCB.is_dir():
        pytest.skip(reason=f"DeepPCB not found at {DEEPPCB}")
    samples = read_split(DEEPPCB, DEEPPCB / "trainval.txt")
    assert len(samples) == 1000
    assert len({s.group for s in samples}) == 7
    assert all(1 <= len(s.truths) <= 15 for s in samples)  # README says 3–12; a few have 1
    assert samples[0].test_path.exists() and samples[0].template_path.exists()
