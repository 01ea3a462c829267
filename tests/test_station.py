"""The review station's pieces: password hashing, accounts in the real PostgreSQL, sign-in
and sessions through the app, and the settings file `linecheck up` leaves for commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from infra.db import make_engine
from infra.settings import Settings, load_settings
from linecheck.running import settings_toml
from linecheck.station.accounts import (
    AccountError,
    Accounts,
    check_name,
    hash_password,
    verify_password,
)
from linecheck.station.app import _safe_next, create_app


def test_password_hashes_are_salted_and_only_the_password_verifies() -> None:
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first != second and first.startswith("scrypt$")
    assert verify_password("correct horse", first) and verify_password("correct horse", second)
    assert not verify_password("correct hors", first)
    assert not verify_password("correct horse", "scrypt$broken")
    assert "correct horse" not in first


@pytest.mark.parametrize("name", ["", "a:b", "with space", "x" * 65, "naïve"])
def test_user_names_that_break_basic_auth_or_logs_are_refused(name: str) -> None:
    with pytest.raises(AccountError, match="invalid user name"):
        check_name(name)


@pytest.mark.parametrize(
    ("target", "expected"),
    [("/boards/e1", "/boards/e1"), ("//evil.example/x", "/queue"), ("https://x", "/queue"),
     (None, "/queue")],
)  # fmt: skip
def test_sign_in_only_returns_to_local_pages(target: str | None, expected: str) -> None:
    assert _safe_next(target) == expected


@pytest.mark.services
def test_accounts_take_effect_at_once(settings: Settings) -> None:
    engine = make_engine(settings.postgres.url.get_secret_value())
    accounts = Accounts(engine)
    name = f"op-{settings.topics.flagged.split('.')[0]}"
    try:
        assert accounts.add(name, "first-password")
        assert accounts.authenticate(name, "first-password")
        assert not accounts.authenticate(name, "wrong-password")
        with pytest.raises(AccountError, match="exists"):
            accounts.add(name, "other-password")
        with pytest.raises(AccountError, match="too short"):
            accounts.add(name + "x", "short")
        assert not accounts.add(name, "second-password", replace=True)
        # the verified-password cache must not keep the old password valid
        assert not accounts.authenticate(name, "first-password")
        assert accounts.authenticate(name, "second-password")
        assert accounts.remove(name) and not accounts.authenticate(name, "second-password")
    finally:
        accounts.remove(name)
        engine.dispose()


@pytest.mark.services
def test_sign_in_sessions_and_a_removed_account_is_out(settings: Settings) -> None:
    engine = make_engine(settings.postgres.url.get_secret_value())
    accounts = Accounts(engine)
    name = f"st-{settings.topics.flagged.split('.')[0]}"
    accounts.add(name, "station-password")
    try:
        with TestClient(create_app(settings)) as client:
            page = client.get("/queue", follow_redirects=False)
            assert page.status_code == 303 and page.headers["location"] == "/login?next=/queue"
            bad = client.post("/login", data={"name": name, "password": "nope", "next": "/queue"})
            assert bad.status_code == 401 and "wrong password" in bad.text
            good = client.post(
                "/login",
                data={"name": name, "password": "station-password", "next": "/queue"},
                follow_redirects=False,
            )
            assert good.status_code == 303 and good.headers["location"] == "/queue"
            assert client.get("/queue").status_code == 200
            assert client.get("/api/summary").status_code == 200  # the session serves the API
            accounts.remove(name)
            assert client.get("/api/summary").status_code == 401
            assert client.get("/queue", follow_redirects=False).status_code == 303
    finally:
        accounts.remove(name)
        engine.dispose()


def test_the_running_settings_file_reproduces_the_settings(tmp_path: Path) -> None:
    settings = load_settings(
        postgres={"url": 'postgresql+psycopg://u:s3cr"et@h/db'},
        redis={"url": "redis://:pw@h:1/0"},
        kafka={"topic_prefix": "p."},
        worker={"review_products": ["A", "B"]},
        web={"port": 8123, "secret_key": "k"},
    )
    path = tmp_path / "running.toml"
    path.write_text(settings_toml(settings))
    again = load_settings(path)
    assert again.model_dump() == settings.model_dump()
    assert again.postgres.url.get_secret_value() == 'postgresql+psycopg://u:s3cr"et@h/db'
