"""The browser page: `GET /` serves it to browsers (and a one-line pointer to everyone else), plus its assets.

No build step and no external network: the HTML, script and stylesheet ship as package data in `static/`."""

from __future__ import annotations

import logging
from functools import cache
from importlib.resources import files

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

log = logging.getLogger(__name__)

page_router = APIRouter()

POINTER = "POST a photo as multipart field inputFile; docs at /docs\n"

# Only these files are served: a fixed table, so a path can never reach outside the package.
ASSETS: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

_MAX_UPLOAD_PLACEHOLDER = "__MAX_UPLOAD_BYTES__"

# Everything comes from this origin; `blob:` is the preview of the user's own photo, never uploaded anywhere else.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@cache
def _static_text(name: str) -> str:
    return (files("facerec.web") / "static" / name).read_text(encoding="utf-8")


def render_page(max_upload_bytes: int) -> str:
    """The page's HTML, told the upload limit so it can refuse an oversized photo before sending it."""
    return _static_text("index.html").replace(_MAX_UPLOAD_PLACEHOLDER, str(int(max_upload_bytes)))


def wants_html(accept: str | None) -> bool:
    # Browsers list text/html explicitly; curl sends */* and scripts often send nothing: they get the pointer.
    return accept is not None and "text/html" in accept.lower()


@page_router.get(
    "/",
    # Documented because curl users land here too: the plain-text answer tells them how to use the API.
    summary="Web page for browsers; a plain-text pointer to the API otherwise",
    description=(
        "With `Accept: text/html` (a browser) this answers the web page for recognizing and enrolling faces. "
        f"Any other request gets the plain text `{POINTER.strip()}`."
    ),
    response_class=Response,
    responses={
        200: {
            "description": "The page, or the pointer, depending on `Accept`.",
            "content": {"text/html": {}, "text/plain": {"example": POINTER}},
        }
    },
)
async def home(request: Request) -> Response:
    headers = {"Vary": "Accept", "Cache-Control": "no-cache"}
    if not wants_html(request.headers.get("accept")):
        return PlainTextResponse(POINTER, headers=headers)
    html = render_page(request.app.state.settings.max_upload_bytes)
    return HTMLResponse(html, headers={**headers, **_SECURITY_HEADERS})


@page_router.get("/static/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, f"no asset named {name!r}")
    return Response(
        _static_text(name), media_type=media_type, headers={"Cache-Control": "no-cache", **_SECURITY_HEADERS}
    )
