"""`/docs` and `/redoc` load everything from this server: FastAPI's stock pages fetch Swagger UI and ReDoc (and
ReDoc Google Fonts) from CDNs, which leaves a blank page on a machine without internet access."""

from __future__ import annotations

import re

import pytest

from tests.web.harness import running_web

# Every URL an HTML page can make the browser fetch on its own.
_FETCHED = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url\(\s*["']?([^"')]+)""")


def fetched_urls(html: str) -> list[str]:
    return [a or b for a, b in _FETCHED.findall(html)]


@pytest.mark.parametrize(
    ("page", "assets"),
    [("/docs", {".js": "javascript", ".css": "text/css"}), ("/redoc", {".js": "javascript"})],
)
async def test_docs_pages_load_their_assets_from_this_server(page: str, assets: dict[str, str]) -> None:
    async with running_web() as web:
        html = await web.client.get(page)
        urls = fetched_urls(html.text)
        replies = {url: await web.client.get(url) for url in urls}

    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    # The browser test shows the pages render under this policy; here: that it is sent at all.
    assert html.headers["content-security-policy"].startswith("default-src 'self';")
    foreign = [url for url in urls if not url.startswith("/")]
    assert not foreign, f"{page} fetches from elsewhere: {foreign}"
    for suffix, media_type in assets.items():
        served = [url for url in urls if url.endswith(suffix)]
        assert served, f"{page} loads no {suffix} asset: {urls}"
        for url in served:
            assert replies[url].status_code == 200, url
            assert media_type in replies[url].headers["content-type"], (url, replies[url].headers["content-type"])
    assert all(reply.status_code == 200 for reply in replies.values()), {u: r.status_code for u, r in replies.items()}
