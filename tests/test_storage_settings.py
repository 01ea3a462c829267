"""Object store (claim check, templates) and settings: pure parts, no servers."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from infra.images import ImageDecodeError, decode_gray, encode_png
from infra.object_store import ObjectStore, StorageError
from infra.settings import load_settings, settings_env
from schemas.events import ImageRef


def test_claim_check_round_trip_and_integrity(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    uri = store.put(b"png bytes", "image/png")
    assert uri.startswith("file://") and uri.endswith(".png")
    assert store.put(b"png bytes", "image/png") == uri  # content-addressed: idempotent
    assert store.get(uri) == b"png bytes"
    import hashlib

    good = ImageRef(uri=uri, sha256=hashlib.sha256(b"png bytes").hexdigest())
    assert store.image_bytes(good) == b"png bytes"
    with pytest.raises(StorageError, match="do not match sha256"):
        store.image_bytes(ImageRef(uri=uri, sha256="0" * 64))


def test_claim_check_rejects_missing_foreign_and_escaping_uris(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "store")
    with pytest.raises(StorageError, match="not found"):
        store.get((tmp_path / "store" / "nope.png").as_uri())
    with pytest.raises(StorageError, match="unsupported claim-check URI scheme"):
        store.get("s3://bucket/key.png")
    with pytest.raises(StorageError, match="outside the object store"):
        store.get("file:///etc/passwd")


def test_templates_by_id(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    assert store.get_template("tpl-1") is None
    store.put_template("tpl-1", b"abc")
    assert store.get_template("tpl-1") == b"abc"
    with pytest.raises(StorageError, match="invalid template id"):
        store.template_path("../escape")


def test_png_round_trip_and_decode_errors() -> None:
    import numpy as np

    image = (np.arange(64 * 48) % 256).astype(np.uint8).reshape(48, 64)
    assert np.array_equal(decode_gray(encode_png(image)), image)
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_gray(b"")
    with pytest.raises(ImageDecodeError, match="not a decodable image"):
        decode_gray(b"GIF89a but not really")


def test_settings_layering_file_env_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "linecheck.toml"
    config.write_text(
        '[kafka]\npartitions = 3\ngroup_id = "from-file"\n[model]\nbackend = "torch"\n'
    )
    monkeypatch.setenv("LINECHECK_KAFKA__GROUP_ID", "from-env")
    s = load_settings(config)
    assert (s.kafka.partitions, s.kafka.group_id, s.model.backend) == (3, "from-env", "torch")
    s2 = load_settings(config, kafka={"group_id": "explicit"})
    assert s2.kafka.group_id == "explicit"
    # What a child process gets reproduces the same settings.
    monkeypatch.delenv("LINECHECK_KAFKA__GROUP_ID")
    for key, value in settings_env(s).items():
        monkeypatch.setenv(key, value)
    assert load_settings() == s


def test_settings_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="partitons"):
        load_settings(kafka={"partitons": 3})
    with pytest.raises(ValidationError, match="backend"):
        load_settings(model={"backend": "tensorflow"})
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_settings(tmp_path / "missing.toml")


def test_config_masks_passwords_but_children_get_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from infra.settings import settings_env
    from linecheck.cli import app

    secret_pg = "postgresql+psycopg://lc:s3cr3t-pg@db:5432/linecheck"
    monkeypatch.setenv("LINECHECK_POSTGRES__URL", secret_pg)
    monkeypatch.setenv("LINECHECK_REDIS__URL", "redis://:s3cr3t-redis@cache:6379/0")
    shown = CliRunner().invoke(app, ["config"])
    assert shown.exit_code == 0, shown.output
    assert "s3cr3t" not in shown.output
    assert "postgresql+psycopg://lc:***@db:5432/linecheck" in shown.output
    assert "s3cr3t-pg" not in repr(load_settings())  # nor in a traceback's locals
    env = settings_env(load_settings())
    assert env["LINECHECK_POSTGRES__URL"] == secret_pg  # a worker process needs the real one


def test_the_readme_configuration_example_is_valid(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme[readme.index("```toml\n[kafka]") + len("```toml\n") :]
    config = tmp_path / "linecheck.toml"
    config.write_text(block[: block.index("```")])
    settings = load_settings(config)  # unknown or malformed keys raise here
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.images.sixteen_bit == "scale" and settings.worker.migrate is False
