"""Operator accounts of the review station: names and scrypt password hashes in the audit
store's `users` table. Every check reads the table, so `linecheck users add` (or remove)
takes effect at once, also while `linecheck up` runs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from infra.db import users

# scrypt's interactive-login parameters (RFC 7914 §2): ~50 ms and 16 MiB per check.
_N, _R, _P = 2**14, 8, 1
_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")  # no ':' (HTTP Basic splits on it), no spaces
MIN_PASSWORD = 8


class AccountError(ValueError):
    """A user name or password that cannot be used; the message says why."""


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64): salted, slow to brute-force."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, TypeError):  # a malformed hash never matches
        return False
    return hmac.compare_digest(got, expected)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise AccountError(
            f"invalid user name {name!r}: 1-64 letters, digits and . _ @ - (no spaces or ':')"
        )
    return name


class Accounts:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        # (name, stored hash) → sha256 of the password last verified against it: an API
        # client sending Basic auth on every call costs one scrypt, not one per call. A
        # changed or removed account changes or drops the stored hash, so it misses.
        self._verified: dict[tuple[str, str], bytes] = {}

    def add(self, name: str, password: str, replace: bool = False) -> bool:
        """Create the account (or set its password with ``replace``); False when it existed
        and was replaced."""
        check_name(name)
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"password too short: at least {MIN_PASSWORD} characters")
        row = {"name": name, "password_hash": hash_password(password)}
        with self.engine.begin() as conn:
            existed = conn.execute(sa.select(users.c.name).where(users.c.name == name)).first()
            if existed is not None and not replace:
                raise AccountError(f"user {name!r} exists: use --replace to set a new password")
            stmt = insert(users).values(**row)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[users.c.name],
                    set_={"password_hash": stmt.excluded.password_hash},
                )
            )
        return existed is None

    def remove(self, name: str) -> bool:
        with self.engine.begin() as conn:
            return conn.execute(sa.delete(users).where(users.c.name == name)).rowcount > 0

    def list(self) -> list[tuple[str, datetime]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(users.c.name, users.c.created_at).order_by(users.c.name))
            return [(str(n), t) for n, t in rows]

    def exists(self, name: str) -> bool:
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(users.c.name).where(users.c.name == name)).first()
        return found is not None

    def authenticate(self, name: str, password: str) -> bool:
        with self.engine.connect() as conn:
            stored = conn.execute(
                sa.select(users.c.password_hash).where(users.c.name == name)
            ).scalar_one_or_none()
        if stored is None:
            return False
        key, fingerprint = (name, stored), hashlib.sha256(password.encode()).digest()
        cached = self._verified.get(key)
        if cached is not None and hmac.compare_digest(cached, fingerprint):
            return True
        if not verify_password(password, stored):
            return False
        if len(self._verified) > 1024:
            self._verified.clear()
        self._verified[key] = fingerprint
        return True
