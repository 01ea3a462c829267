"""The review station's web app: sign-in, the queue, one board at a time, the quality
page, plus the JSON API and health endpoints (``linecheck.station.api``).

Server-side Jinja templates and two small scripts: no front-end build step."""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.middleware.sessions import SessionMiddleware

from infra.settings import Settings
from linecheck.station import queries
from linecheck.station.api import iso, router
from linecheck.station.auth import CurrentStation, PageUser, SignInRequired
from linecheck.station.context import Station, session_secret
from schemas.events import DefectType

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["iso"] = iso
_report_lock = threading.Lock()  # matplotlib's pyplot is not thread-safe


def _safe_next(target: str | None) -> str:
    """Only local paths: a sign-in link must not send an operator to another site."""
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return "/queue"


def create_app(settings: Settings, station: Station | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.station = station or Station.for_settings(settings)
        yield
        app.state.station.close()

    app = FastAPI(
        title="linecheck review station",
        description="Boards awaiting a person, decisions as ReviewOutcome on boards.reviews.",
        lifespan=lifespan,
    )
    app.add_middleware(
        SessionMiddleware,
        secret_key=session_secret(settings),
        session_cookie="linecheck_session",
        max_age=int(settings.web.session_hours * 3600),
        same_site="strict",  # the station's forms and fetches never come from another site
    )
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(router)

    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, _exc: SignInRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str | None = None) -> Response:
        return templates.TemplateResponse(
            request, "login.html", {"next": _safe_next(next), "error": None, "user": None}
        )

    @app.post("/login", response_class=HTMLResponse)
    def login(
        request: Request,
        st: CurrentStation,
        name: Annotated[str, Form()],
        password: Annotated[str, Form()],
        next: Annotated[str, Form()] = "/queue",
    ) -> Response:
        if not st.accounts.authenticate(name, password):
            return templates.TemplateResponse(
                request,
                "login.html",
                {"next": _safe_next(next), "error": "unknown user or wrong password", "user": None},
                status_code=401,
            )
        request.session.clear()
        request.session["user"] = name
        return RedirectResponse(_safe_next(next), status_code=303)

    @app.post("/logout")
    def logout(request: Request) -> Response:
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    @app.get("/")
    def home() -> Response:
        return RedirectResponse("/queue", status_code=303)

    @app.get("/queue", response_class=HTMLResponse)
    def queue_page(
        request: Request, st: CurrentStation, user: PageUser, line: str | None = None
    ) -> Response:
        rows = queries.review_queue(st.engine, limit=100, line=line, exclude=st.pending())
        context = {
            "user": user,
            "line": line or "",
            "lines": queries.lines(st.engine),
            "rows": rows,
            "refresh_ms": int(st.settings.web.queue_refresh_s * 1000),
        }
        return templates.TemplateResponse(request, "queue.html", context)

    @app.get("/boards/{event_id}", response_class=HTMLResponse)
    def board_page(request: Request, event_id: str, st: CurrentStation, user: PageUser) -> Response:
        found = queries.board(st.engine, event_id)
        if found is None:
            raise HTTPException(404, f"no audited board with event id {event_id!r}")
        suggested = sorted({r["defect_type"] for r in found["regions"] if _suspect(r, found)})
        context = {
            "user": user,
            "board": found,
            "types": [t.value for t in DefectType],
            "suggested": suggested,
            # one id per page view: a double click, or a retry, is the same outcome
            "outcome_id": uuid.uuid4().hex,
            "pending": event_id in st.pending(),
        }
        return templates.TemplateResponse(request, "board.html", context)

    @app.get("/quality", response_class=HTMLResponse)
    def quality_page(
        request: Request,
        st: CurrentStation,
        user: PageUser,
        line: str | None = None,
        hours: float | None = 24.0,
    ) -> Response:
        from dashboards.report import REPORT_CSS, render_body, report_data

        body, error = "", None
        try:
            with _report_lock:
                data = report_data(st.engine, st.settings, hours or None, line or None)
                body = render_body(data, st.settings)
        except ValueError as exc:
            error = str(exc)
        context = {
            "user": user,
            "line": line or "",
            "hours": hours,
            "lines": queries.lines(st.engine),
            "report": body,
            "report_css": REPORT_CSS,
            "error": error,
        }
        return templates.TemplateResponse(request, "quality.html", context)

    return app


def _suspect(region: dict[str, Any], board: dict[str, Any]) -> bool:
    """A region whose model type pre-fills the decision: typed and not clearly good."""
    floor = board.get("pass_below") or 0.0
    return bool(region.get("defect_type")) and float(region.get("score", 0.0)) >= floor
