"""The layers' promises that import-linter cannot check: what an import costs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("cv2", "torch", "openvino")


def _loaded_after(code: str) -> set[str]:
    """Top-level modules loaded by a fresh interpreter running ``code``."""
    report = "import sys, json\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    probe = f"{code}\n{report}"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_contracts_and_the_publisher_import_no_heavy_library() -> None:
    loaded = _loaded_after("import schemas, producers.publisher")
    assert "schemas" in loaded and "producers" in loaded
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_an_openvino_worker_inspects_and_explains_without_torch(model_dir: Path) -> None:
    """The worker's per-event path with OpenVINO serving and explanations on (the defaults)
    never loads torch: the heatmaps come from the IR too."""
    code = f"""
import numpy as np, tempfile
from pathlib import Path
from board_data.synthetic import BoardGenerator
from infra.images import encode_png
from infra.object_store import ObjectStore
from inspection.backends import load_classifier
from inspection.explain import Explainer
from inspection.model.registry import load_card
from schemas.events import FlaggedBoard, ImageRef
from workers.inspection_app import create_inspection_app
from workers.inspector import Inspector, SourceInfo
model_dir = Path({str(model_dir)!r})
store = ObjectStore(Path(tempfile.mkdtemp()))
board = BoardGenerator(seed=3, defect_rate=1.0).board(0)
store.put_template(board.template_id, encode_png(board.template))
inspector = Inspector(load_classifier(model_dir, backend="openvino"),
                      load_card(model_dir).require_thresholds(), store,
                      explainer=Explainer(model_dir, backend="openvino"))
event = FlaggedBoard(line="L1", machine="aoi", product=board.product, board_serial="S1",
                     template_id=board.template_id,
                     image=ImageRef(data=encode_png(board.image), media_type="image/png"))
verdict = inspector.process(event.model_dump_json().encode(), SourceInfo(topic="t"))
assert verdict.explanation_uri is not None, verdict
"""
    loaded = _loaded_after(code)
    assert "openvino" in loaded and "cv2" in loaded  # it did inspect
    assert "torch" not in loaded
