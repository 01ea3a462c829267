"""Who is asking: the signed-in operator (session cookie) for pages, the same accounts by
HTTP Basic for the JSON API. Accounts are read per request, so a removed user is out at once."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from linecheck.station.context import Station, station


class SignInRequired(Exception):
    """A page asked for without a session: the app redirects to the sign-in page."""


def _basic(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        name, sep, password = base64.b64decode(token, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (name, password) if sep else None


def _session_user(request: Request, st: Station) -> str | None:
    name = request.session.get("user")
    if isinstance(name, str) and st.accounts.exists(name):
        return name
    request.session.clear()
    return None


def api_user(request: Request, st: Annotated[Station, Depends(station)]) -> str:
    """The account behind an API call: HTTP Basic, or the station's own session."""
    basic = _basic(request)
    if basic is not None:
        if st.accounts.authenticate(*basic):
            return basic[0]
    else:
        name = _session_user(request, st)
        if name is not None:
            return name
    raise HTTPException(
        status_code=401,
        detail="sign in: HTTP Basic with a station account (`linecheck users add NAME`)",
        headers={"WWW-Authenticate": 'Basic realm="linecheck"'},
    )


def page_user(request: Request, st: Annotated[Station, Depends(station)]) -> str:
    name = _session_user(request, st)
    if name is None:
        raise SignInRequired()
    return name


ApiUser = Annotated[str, Depends(api_user)]
PageUser = Annotated[str, Depends(page_user)]
CurrentStation = Annotated[Station, Depends(station)]
