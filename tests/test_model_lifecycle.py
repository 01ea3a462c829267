"""Model lifecycle: stages in the real PostgreSQL, a worker's inspector switching models
between batches as they change, and a model carried as one verified file."""

from __future__ import annotations

import io
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from board_data.synthetic import BoardGenerator
from infra.db import make_engine
from infra.images import encode_png
from infra.object_store import ObjectStore
from infra.settings import Settings
from inspection.backends import load_classifier
from inspection.model.archive import ArchiveError, export_model, import_model
from inspection.model.registry import clone_model
from inspection.model.stages import StageError, StageStore
from schemas.events import FlaggedBoard, ImageRef
from workers.inspection_processes import build_inspector
from workers.model_swap import ModelSwapper, load_served


@pytest.fixture()
def stages(settings: Settings) -> Iterator[StageStore]:
    """The stages of the session's audit store, emptied: a worker serves every product's
    active model, so another test's stages must not be there."""
    engine = make_engine(settings.postgres.url.get_secret_value())

    def empty() -> None:
        with engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE model_stages, model_stage_history"))

    empty()
    yield StageStore(engine)
    empty()  # nor must this test's stages reach the workers of the tests after it
    engine.dispose()


def _product() -> str:
    return f"P-{uuid.uuid4().hex[:8]}"


@pytest.mark.services
def test_one_active_model_per_product_promote_and_rollback_are_recorded(
    stages: StageStore,
) -> None:
    product = _product()
    assert stages.promote("m1", "alice", product) is None
    assert stages.promote("m2", "bob", product) == "m1"
    assert stages.active()[product] == "m2"
    assert {(r.model_version, r.stage) for r in stages.rows() if r.product == product} == {
        ("m1", "retired"),
        ("m2", "active"),
    }
    with pytest.raises(StageError, match="already the active"):
        stages.promote("m2", "bob", product)
    assert stages.rollback("carol", product) == ("m2", "m1")
    assert stages.active()[product] == "m1"
    changes = [
        (h["model_version"], h["from_stage"], h["to_stage"], h["changed_by"])
        for h in stages.history()
        if h["product"] == product
    ]
    assert changes == [
        ("m1", None, "active", "alice"),
        ("m1", "active", "retired", "bob"),
        ("m2", None, "active", "bob"),
        ("m2", "active", "retired", "carol"),
        ("m1", "retired", "active", "carol"),
    ]
    with pytest.raises(StageError, match="no active model"):
        stages.rollback("x", _product())
    # the database itself keeps one active per product
    with pytest.raises(sa.exc.IntegrityError), stages.engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO model_stages VALUES (:p, 'm9', 'active', 'x', now())"),
            {"p": product},
        )


def _event(product: str, index: int) -> FlaggedBoard:
    board = BoardGenerator(seed=3).board(index)
    return FlaggedBoard(
        line="L1",
        machine="aoi-1",
        product=product,
        board_serial=f"S{index}",
        image=ImageRef(data=encode_png(board.image)),
    )


@pytest.mark.services
def test_workers_switch_models_between_batches_and_keep_serving_when_the_registry_fails(
    settings: Settings, stages: StageStore, model_dir: Path
) -> None:
    settings.worker.explain = False
    candidate = clone_model(model_dir, f"{model_dir.name}-c{uuid.uuid4().hex[:6]}")
    inspector = build_inspector(settings)
    clock = [0.0]
    swapper = ModelSwapper(
        stages,
        lambda v: load_served(settings, settings.model.models_dir / v),
        refresh_s=5.0,
        clock=lambda: clock[0],
    )
    swapper.adopt(model_dir.name, inspector.model_for(""))
    other, mine = _product(), _product()
    assert inspector.inspect(_event(mine, 0)).model_version == model_dir.name
    stages.promote(candidate.name, "qa", product=mine)
    assert swapper.refresh(inspector)  # a product's own active model
    assert inspector.inspect(_event(mine, 1)).model_version == candidate.name
    assert inspector.inspect(_event(other, 2)).model_version == model_dir.name
    clock[0] += 1.0
    stages.promote(model_dir.name, "qa", product=mine)
    assert not swapper.refresh(inspector)  # within refresh_s: not looked up yet
    clock[0] += 5.0
    assert swapper.refresh(inspector)
    assert inspector.inspect(_event(mine, 3)).model_version == model_dir.name
    # a registry that cannot be read, or names a model this machine lacks: keep serving
    broken = ModelSwapper(
        StageStore(make_engine("postgresql+psycopg://x:y@127.0.0.1:1/none", 1)),
        lambda v: load_served(settings, settings.model.models_dir / v),
        refresh_s=0.0,
    )
    assert not broken.refresh(inspector)
    stages.promote("no-such-model", "qa", product=mine)
    clock[0] += 10.0
    assert not swapper.refresh(inspector)
    assert inspector.inspect(_event(mine, 4)).model_version == model_dir.name


def test_an_exported_model_imports_elsewhere_with_identical_scores(
    model_dir: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "model.tar.gz"
    manifest = export_model(model_dir, archive)
    assert "model.json" in manifest["files"]  # type: ignore[operator]
    imported = import_model(archive, tmp_path / "line-pc" / "models")
    assert imported.name == model_dir.name
    crops = np.random.default_rng(0).integers(0, 255, (6, 3, 64, 64)).astype(np.uint8)
    here = load_classifier(model_dir, backend="openvino").predict_proba(crops)
    there = load_classifier(imported, backend="openvino").predict_proba(crops)
    assert np.array_equal(here, there)
    assert import_model(archive, tmp_path / "line-pc" / "models") == imported  # idempotent


def test_a_damaged_or_hostile_archive_is_refused(model_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "model.tar.gz"
    export_model(model_dir, archive)
    altered = tmp_path / "altered.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(altered, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member)
            body = data.read() if data else b""
            if member.name.endswith("model.json"):
                body = body.replace(b'"arch"', b'"arch" ', 1)
                member.size = len(body)
            dst.addfile(member, io.BytesIO(body) if member.isfile() else None)
    with pytest.raises(ArchiveError, match="does not match its SHA-256"):
        import_model(altered, tmp_path / "a")
    hostile = tmp_path / "hostile.tar.gz"
    with tarfile.open(hostile, "w:gz") as tar:
        tar.add(model_dir / "model.json", arcname="v1/../../escape.json")
    with pytest.raises(ArchiveError, match="refusing archive member"):
        import_model(hostile, tmp_path / "b")
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(ArchiveError, match="not a model archive"):
        import_model(tmp_path / "junk.tar.gz", tmp_path / "c")
    assert not (tmp_path / "escape.json").exists()


@pytest.mark.services
def test_a_shadow_scores_every_board_beside_the_active_model_and_is_never_published(
    settings: Settings, stages: StageStore, model_dir: Path
) -> None:
    import json as _json

    from typer.testing import CliRunner

    from infra.db import review_outcomes, shadow_verdicts, verdicts
    from infra.kafka_admin import ensure_topics, read_topic
    from infra.settings import settings_env
    from linecheck.cli import app
    from linecheck.processes import start_workers, stop_workers
    from producers.publisher import BoardPublisher
    from producers.simulator import publish_boards, synthetic_samples
    from tests.helpers import wait_until

    shadow = clone_model(model_dir, f"{model_dir.name}-s{uuid.uuid4().hex[:6]}")
    stages.set_stage(shadow.name, "shadow", "qa")
    settings.model.refresh_s = 1.0
    ensure_topics(settings.kafka.bootstrap_servers, settings.topics, settings.kafka.partitions)
    store = ObjectStore(settings.images.object_store)
    publisher = BoardPublisher.for_settings(settings, store)
    workers = start_workers(settings, 1, settings.work_dir / "logs")
    engine = stages.engine
    try:
        boards = publish_boards(publisher, store, synthetic_samples(seed=21), 10)
        ids = [b.event_id for b in boards]

        def rows(table: sa.Table) -> list[tuple[str, str]]:
            with engine.connect() as conn:
                return [
                    (str(e), str(m))
                    for e, m in conn.execute(
                        sa.select(table.c.event_id, table.c.model_version).where(
                            table.c.event_id.in_(ids)
                        )
                    )
                ]

        wait_until(lambda: len(rows(verdicts)) == 10, 120, "10 audit rows")
        wait_until(lambda: len(rows(shadow_verdicts)) == 10, 30, "10 shadow decisions")
    finally:
        stop_workers(workers)
        publisher.close()
    assert {m for _, m in rows(verdicts)} == {model_dir.name}
    assert sorted(rows(shadow_verdicts)) == sorted((e, shadow.name) for e in ids)
    published = read_topic(settings.kafka.bootstrap_servers, settings.topics.verdicts, timeout=20,
                           until=lambda v: len(v) >= 10)  # fmt: skip
    assert sorted(_json.loads(v)["model_version"] for v in published) == [model_dir.name] * 10
    with engine.begin() as conn:  # two boards reviewed, as the station would store them
        for event_id, defective in ((ids[0], True), (ids[1], False)):
            conn.execute(
                sa.insert(review_outcomes).values(
                    event_id=event_id, outcome_id=f"o-{event_id}", line="L1",
                    board_serial=event_id, defective=defective, defect_types=[], regions=[],
                    reviewer="qa", reviewed_at=sa.func.now(),
                )
            )  # fmt: skip
    done = CliRunner().invoke(
        app,
        ["models", "compare", model_dir.name, shadow.name, "--json"],
        env=settings_env(settings),
    )
    assert done.exit_code == 0, done.output
    report = _json.loads(done.stdout.strip().splitlines()[-1])
    # the shadow is the same network: it agrees on every board, and its rates are the same
    assert report["boards"] == 10 and report["agreement"] == 1.0 and report["disagreements"] == 0
    assert report["rates"][model_dir.name] == report["rates"][shadow.name]
    assert report["rates"][shadow.name]["reviewed_defective"] == 1
    listed = CliRunner().invoke(app, ["models", "list", "--json"], env=settings_env(settings))
    assert listed.exit_code == 0, listed.output
    rows_ = {m["version"]: m for m in _json.loads(listed.stdout.strip().splitlines()[-1])["models"]}
    assert rows_[shadow.name]["crop_views"] == [0]  # one network, crops of the box alone
    assert [s.split()[0] for s in rows_[shadow.name]["stages"]] == ["shadow"]
