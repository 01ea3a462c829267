"""Reviewed boards exported as a DeepPCB-layout training set, from the real audit store."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner

from board_data.deeppcb import read_split
from board_data.synthetic import BoardGenerator
from infra.db import make_engine, review_outcomes
from infra.images import encode_png
from infra.settings import Settings, settings_env
from linecheck.cli import app
from schemas.events import FlaggedBoard, ImageRef
from workers.audit_sink import AuditStore
from workers.inspection_processes import build_inspector


def test_reviewed_boards_become_pairs_with_the_boxes_people_confirmed(
    settings: Settings, tmp_path: Path
) -> None:
    settings.worker.explain = False
    settings.quality.audit_rate = 1.0  # every board keeps its image, as for the station
    inspector = build_inspector(settings)
    inspector.audit_rate = 1.0
    product = f"P-{uuid.uuid4().hex[:6]}"
    boards = BoardGenerator(seed=9, defect_rate=1.0)
    decided = []
    for i in range(3):
        board = boards.board(i)
        inspector.store.put_template(board.template_id, encode_png(board.template))
        decided.append(
            inspector.inspect(
                FlaggedBoard(line="L5", machine="m", product=product, board_serial=f"R{i}",
                             template_id=board.template_id,
                             image=ImageRef(data=encode_png(board.image)))
            )
        )  # fmt: skip
    no_image = decided[2].model_copy(update={"event_id": f"gone-{uuid.uuid4().hex}",
                                              "image_uri": None})  # fmt: skip
    audit = AuditStore(settings.postgres.url.get_secret_value())
    audit.record_batch([(v, None, None) for v in [*decided, no_image]])
    audit.close()
    typed = [r for r in decided[0].regions if r.defect_type is not None]
    assert typed, "the board has typed candidate regions"
    kinds = sorted({r.defect_type.value for r in typed})  # type: ignore[union-attr]
    engine = make_engine(settings.postgres.url.get_secret_value())
    outcomes = [
        (decided[0].event_id, True, kinds[:1]),  # defective: the model's boxes of that type
        (decided[1].event_id, False, []),  # good
        (no_image.event_id, True, kinds[:1]),  # no image kept: skipped
    ]
    with engine.begin() as conn:
        for event_id, defective, types in outcomes:
            conn.execute(
                sa.insert(review_outcomes).values(
                    event_id=event_id, outcome_id=f"o-{event_id}", line="L5", board_serial="x",
                    defective=defective, defect_types=types, regions=[], reviewer="ana",
                    reviewed_at=sa.func.now(),
                )
            )  # fmt: skip
    engine.dispose()
    out = tmp_path / "from-line"
    done = CliRunner().invoke(
        app, ["dataset", "export", str(out), "--from-reviews"],
        env=settings_env(settings),
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    # other tests' reviewed boards share this audit store: look at this test's product only
    group = summary["groups"][product]
    pairs = [s for s in read_split(out, out / "trainval.txt") if s.group == f"group{group}"]
    assert len(pairs) == 2 and summary["skipped"].get("image not kept", 0) >= 1
    by_truths = sorted(pairs, key=lambda s: len(s.truths))
    assert by_truths[0].truths == ()  # the good board
    expected = sorted(
        (r.box.x1, r.box.y1, r.box.x2, r.box.y2)
        for r in typed
        if r.defect_type.value == kinds[0]  # type: ignore[union-attr]
    )
    got = sorted((t.box.x1, t.box.y1, t.box.x2, t.box.y2) for t in by_truths[1].truths)
    assert got == expected and {t.defect_type.value for t in by_truths[1].truths} == {kinds[0]}
    board, template = by_truths[1].load()
    original = boards.board(0)
    assert board.shape == original.image.shape and template.shape == original.template.shape
    assert abs(board.astype(int) - original.image).mean() < 1.0  # JPEG at quality 100
    rows = (out / "boards.csv").read_text().splitlines()
    assert any(decided[0].event_id in r and "ana" in r for r in rows)
