"""`/docs` (Swagger UI) and `/redoc` built from files this server ships, under a policy that keeps them here.

FastAPI's stock pages load Swagger UI and ReDoc from CDNs (ReDoc also Google Fonts), so without internet access they
are blank. The fastapi-offline package ships the same files; they are served from `ASSETS_URL` as FastAPI's
self-hosting recipe describes. The Content-Security-Policy keeps the pages on this origin: ReDoc's sidebar logo,
which it always loads from its own CDN, is refused by the browser before any request is made."""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import as_file, files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def content_security_policy(html: str) -> str:
    """Only this origin, plus the page's own inline scripts by hash (Swagger UI's set-up call). Styles may be
    inline: both UIs set them from script (ReDoc writes <style> elements); data: images are Swagger UI's icons."""
    hashes = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(html)
    )
    return (
        f"default-src 'self'; script-src 'self'{hashes}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    )


def _guarded(page: HTMLResponse) -> HTMLResponse:
    html = bytes(page.body).decode()
    page.headers["Content-Security-Policy"] = content_security_policy(html)
    page.headers["X-Content-Type-Options"] = "nosniff"
    page.headers["Referrer-Policy"] = "no-referrer"
    return page


def install_docs(app: FastAPI) -> None:
    """Serve `/docs`, `/redoc` and their assets on `app`, which must be created with `docs_url=None, redoc_url=None`."""
    # as_file: a real directory for StaticFiles (the package is a plain folder when pip installs it).
    with as_file(files("fastapi_offline") / "static") as assets:
        app.mount(ASSETS_URL, StaticFiles(directory=assets), name="docs-assets")

    def urls(request: Request) -> tuple[str, str]:
        root = request.scope.get("root_path", "")
        return f"{root}{app.openapi_url}", f"{root}{ASSETS_URL}"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        openapi, assets = urls(request)
        page = get_swagger_ui_html(
            openapi_url=openapi,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png",
            oauth2_redirect_url=None,  # the API has no OAuth
            swagger_ui_parameters=app.swagger_ui_parameters,
        )
        return _guarded(page)

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        openapi, assets = urls(request)
        page = get_redoc_html(
            openapi_url=openapi,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/favicon.png",
            with_google_fonts=False,
        )
        return _guarded(page)
