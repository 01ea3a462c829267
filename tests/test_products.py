"""The product registry in a real PostgreSQL (a database of its own: the flow tests' store
registers every product), and a real worker that dead-letters an unregistered product's board,
then inspects it once the product is set, against the template the registry names."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from typer.testing import CliRunner

from board_data.synthetic import BoardGenerator
from infra.db import make_engine, upgrade
from infra.images import encode_png
from infra.kafka_admin import ensure_topics, read_topic
from infra.object_store import ObjectStore
from infra.settings import Settings, settings_env
from inspection.products import (
    ALL_PRODUCTS,
    ProductError,
    ProductStore,
    ProductView,
    registered,
)
from linecheck.cli.main import app
from linecheck.processes import start_workers, stop_workers
from producers.publisher import BoardPublisher
from tests.helpers import make_verdict
from workers.audit_sink import AuditStore


@pytest.fixture()
def own_db(stack: object) -> Iterator[str]:
    """A fresh database on the session's PostgreSQL, migrated to 0007, one verdict stored,
    then to head: what a line upgraded to the registry has."""
    base = stack.postgres_url  # type: ignore[attr-defined]
    name = f"products_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    url = sa.make_url(base).set(database=name).render_as_string(hide_password=False)
    upgrade(url, "0007")
    audit = AuditStore(url)
    assert audit.record(make_verdict("e1", product="OLD-1"))
    audit.close()
    upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


@pytest.mark.services
def test_registry_entries_migration_seed_and_the_view_a_worker_holds(own_db: str) -> None:
    engine = make_engine(own_db)
    store = ProductStore(engine)
    # the migration registered the product the store had already inspected, and only it
    assert {p: e.mode for p, e in store.entries().items()} == {"OLD-1": "reference"}
    assert store.set("A", "anomaly", "alice", note="castings") is None
    before = store.set("A", "reference", "bob", template_id="golden-a")
    assert before is not None and before.mode == "anomaly" and before.changed_by == "alice"
    entry = store.entries()["A"]
    assert (entry.mode, entry.template_id, entry.changed_by) == ("reference", "golden-a", "bob")
    # ensure never overwrites what an operator set
    assert store.ensure(["A", "B", "B"], "reference", "demo") == ["B"]
    assert store.entries()["A"].template_id == "golden-a"
    with pytest.raises(ProductError, match="unknown inspection mode 'golden'"):
        store.set("C", "golden", "x")
    # the database refuses an unknown mode too
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO products (product, mode, changed_by, changed_at) "
                "VALUES ('D', 'magic', 'x', :t)"
            ),
            {"t": datetime.now(UTC)},
        )
    entries = store.entries()
    with pytest.raises(ProductError, match=r"'Z' is not in the product registry.*products set Z"):
        registered(entries, "Z", "reference", "v1")
    with pytest.raises(ProductError, match=r"registered for reference inspection.*serves anomaly"):
        registered(entries, "A", "anomaly", "v2")
    store.set(ALL_PRODUCTS, "reference", "ops")
    assert registered(store.entries(), "Z", "reference", "v1").product == ALL_PRODUCTS
    assert store.remove(ALL_PRODUCTS).mode == "reference"
    with pytest.raises(ProductError, match="not in the registry"):
        store.remove(ALL_PRODUCTS)
    # a worker's view reads again when a board names a product it does not know
    view = ProductView(store, reread_s=0.0)
    store.set("NEW", "reference", "ops")
    assert view.entry("NEW", "reference", "v1").product == "NEW"
    slow = ProductView(store, reread_s=3600.0)
    before_read = datetime.now(UTC) - timedelta(seconds=1)
    store.set("NEWER", "reference", "ops")
    with pytest.raises(ProductError):  # read a moment ago, the board is older: not again yet
        slow.entry("NEWER", "reference", "v1", published_at=before_read)
    time.sleep(2 * ProductView.MIN_GAP_S)
    # a board published after the last read: registered since, perhaps; read again at once
    assert slow.entry("NEWER", "reference", "v1", published_at=datetime.now(UTC)).mode
    store.set("NEWEST", "reference", "ops")
    with pytest.raises(ProductError):  # old boards of an unknown product do not hammer it
        slow.entry("NEWEST", "reference", "v1", published_at=before_read)
    engine.dispose()


@pytest.mark.services
def test_an_unregistered_product_is_a_dead_letter_until_set_then_its_template_is_used(
    settings: Settings, own_db: str
) -> None:
    live = settings.model_copy(
        update={"postgres": settings.postgres.model_copy(update={"url": SecretStr(own_db)})}
    )
    env = settings_env(live)
    runner = CliRunner()
    ensure_topics(live.kafka.bootstrap_servers, live.topics, live.kafka.partitions)
    store = ObjectStore(live.images.object_store)
    board = BoardGenerator(seed=31, defect_rate=1.0).board(0)
    store.put_template(board.template_id, encode_png(board.template))
    publisher = BoardPublisher.for_settings(live, store)
    workers = start_workers(live, 1, live.work_dir / "logs")
    try:
        first = publisher.publish(
            encode_png(board.image), line="L1", machine="m", product="NEW-1", board_serial="S1"
        )
        publisher.flush()
        dead = read_topic(live.kafka.bootstrap_servers, live.topics.deadletter, timeout=90,
                          until=lambda v: len(v) >= 1)  # fmt: skip
        letter = json.loads(dead[0])
        assert letter["event_id"] == first.event_id and letter["stage"] == "product"
        assert "linecheck products set NEW-1 --mode reference" in letter["reason"]
        # a mode its model does not serve is refused before it reaches a worker
        refused = runner.invoke(app, ["products", "set", "NEW-1", "--mode", "anomaly"], env=env)
        assert refused.exit_code == 2
        assert "serves reference" in " ".join(refused.output.split())
        missing = runner.invoke(app, ["products", "set", "NEW-1", "--template", "no-such"], env=env)
        assert missing.exit_code == 2 and "templates add" in " ".join(missing.output.split())
        done = runner.invoke(
            app,
            ["products", "set", "NEW-1", "--template", board.template_id, "--by", "qa"],
            env=env,
        )
        assert done.exit_code == 0, done.output
        listed = runner.invoke(app, ["products", "list", "--json"], env=env)
        rows = {r["product"]: r for r in json.loads(listed.stdout.strip().splitlines()[-1])[
            "products"]}  # fmt: skip
        assert rows["NEW-1"]["template_id"] == board.template_id
        assert rows["NEW-1"]["changed_by"] == "qa"
        time.sleep(1.1)  # past the view's re-read interval of the first miss
        second = publisher.publish(
            encode_png(board.image), line="L1", machine="m", product="NEW-1", board_serial="S2"
        )  # the event names no template: the registry's is used
        publisher.flush()
        verdicts = read_topic(live.kafka.bootstrap_servers, live.topics.verdicts, timeout=90,
                              until=lambda v: len(v) >= 1)  # fmt: skip
        verdict = json.loads(verdicts[0])
        assert verdict["event_id"] == second.event_id
        assert verdict["roi_method"] == "reference"
        assert verdict["template_id"] == board.template_id
    finally:
        publisher.close()
        stop_workers(workers)


def test_a_locator_or_anomaly_model_is_never_every_products_model(
    settings: Settings, model_dir: Path, tmp_path: Path
) -> None:
    from inspection.model.registry import clone_model, load_card, update_card

    models = tmp_path / "models"
    folder = clone_model(model_dir, "tiles-v1", models)
    update_card(folder, load_card(folder).model_copy(update={"mode": "anomaly"}))
    env = {**settings_env(settings), "LINECHECK_MODEL__MODELS_DIR": str(models)}
    refused = CliRunner().invoke(app, ["models", "promote", "tiles-v1"], env=env)
    assert refused.exit_code == 2
    assert "products set PRODUCT --mode anomaly --model tiles-v1" in " ".join(
        refused.output.split()
    )
