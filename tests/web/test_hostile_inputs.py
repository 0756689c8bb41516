"""Hostile input where bugs live: filenames, person names, headers and multipart framing built by hand (a
client library would clean them up). Every answer is 4xx or 200, never 5xx, and a rejected request leaves
nothing in any store."""

from __future__ import annotations

import functools
import sys
import unicodedata
from typing import Any

from facerec.testing import jpeg_bytes
from tests.web.harness import Web, running_web

PHOTO = jpeg_bytes((90, 40, 160))
BOUNDARY = "hostile-boundary"
ROUTES = ("/", "/v1/recognitions", "/v1/people/Ada/photos", "/v1/verifications")


@functools.cache
def _one_char_per_unicode_category() -> str:
    """One code point of every general category UTF-8 can carry (surrogates, Cs, cannot be sent)."""
    found: dict[str, str] = {}
    for code in range(sys.maxunicode + 1):
        category = unicodedata.category(chr(code))
        if category not in found and category != "Cs":
            found[category] = chr(code)
    return "".join(found.values())


FILENAMES: tuple[str, ...] = (
    "\x01" * 120 + "A" * 64 + ".jpg",  # the reproduced 500: JSON escaping made the message too long
    "".join(chr(c) for c in range(32)) + "\x7f.jpg",
    "a\x00b.jpg",
    "../../../etc/passwd",
    "..\\..\\windows\\system32.jpg",
    "x\r\nContent-Type: text/html\r\n\r\n.jpg",
    "é" * 1024 + ".jpg",
    "A" * 4096 + ".jpg",
    "\U0001f600" * 1000 + ".png",
    _one_char_per_unicode_category() + ".jpg",
    "\u202e" + "gpj.exe",
    "",
    ".",
    "..",
    ":.jpg",
)


def multipart(parts: list[tuple[bytes, bytes]], boundary: str = BOUNDARY, close: bool = True) -> bytes:
    """`parts`: (raw Content-Disposition value, body), sent byte for byte."""
    out = b""
    for disposition, body in parts:
        out += f"--{boundary}\r\n".encode() + b"Content-Disposition: " + disposition + b"\r\n"
        out += b"Content-Type: image/jpeg\r\n\r\n" + body + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if close else b"")


def file_part(field: str, filename: str, body: bytes = PHOTO) -> tuple[bytes, bytes]:
    return f'form-data; name="{field}"; filename="'.encode() + filename.encode("utf-8") + b'"', body


def form_for(route: str, filename: str) -> bytes:
    if route == "/v1/verifications":
        return multipart([file_part("image1", filename), file_part("image2", filename)])
    field = "photos" if route.startswith("/v1/people") else "inputFile"
    return multipart([file_part(field, filename)])


async def post_raw(web: Web, route: str, body: bytes, **headers: str) -> Any:
    content_type = headers.pop("content_type", f"multipart/form-data; boundary={BOUNDARY}")
    return await web.client.post(route, content=body, headers={"Content-Type": content_type, **headers})


async def stored(web: Web) -> int:
    assert web.data.gallery is not None
    return await web.data.inputs.count() + await web.data.gallery.count() + await web.data.outputs.count()


async def test_hostile_filenames_never_give_5xx_and_rejections_leave_nothing() -> None:
    async with running_web() as web:
        for filename in FILENAMES:
            for route in ROUTES:
                before = await stored(web)
                reply = await post_raw(web, route, form_for(route, filename))
                assert reply.status_code < 500, (route, filename[:40], reply.status_code, reply.text[:200])
                if reply.status_code >= 400:
                    assert await stored(web) == before, (route, filename[:40], reply.status_code)


PERSON_NAMES = (
    "..",
    "../etc",
    "a/b",
    "a\x00b",
    "%2e%2e",
    "\r\nX-Injected: 1",
    "A" * 4096,
    "\u202eevil",
    " ",
    _one_char_per_unicode_category(),
)


async def test_hostile_person_names_never_give_5xx_and_rejections_leave_nothing() -> None:
    async with running_web() as web:
        for name in PERSON_NAMES:
            path = "/v1/people/" + "".join(f"%{byte:02X}" for byte in name.encode("utf-8"))
            before = await stored(web)
            enroll = await post_raw(web, f"{path}/photos", multipart([file_part("photos", "a.jpg")]))
            delete = await web.client.delete(path)
            verify = await post_raw(
                web,
                "/v1/verifications",
                multipart([file_part("image1", "a.jpg")])[: -len(f"--{BOUNDARY}--\r\n")]
                + f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="person"\r\n\r\n'.encode()
                + name.encode()
                + f"\r\n--{BOUNDARY}--\r\n".encode(),
            )
            for reply in (enroll, delete, verify):
                assert reply.status_code < 500, (name[:40], reply.status_code, reply.text[:200])
            if enroll.status_code >= 400:
                assert await stored(web) - before <= (1 if verify.status_code < 400 else 0)


MULTIPART_CASES: tuple[tuple[str, bytes, dict[str, str]], ...] = (
    ("no boundary parameter", multipart([file_part("inputFile", "a.jpg")]), {"content_type": "multipart/form-data"}),
    ("another boundary", multipart([file_part("inputFile", "a.jpg")], boundary="other"), {}),
    ("no closing boundary", multipart([file_part("inputFile", "a.jpg")], close=False), {}),
    ("cut inside the part", multipart([file_part("inputFile", "a.jpg")])[:200], {}),
    ("empty body", b"", {}),
    ("only the closing boundary", f"--{BOUNDARY}--\r\n".encode(), {}),
    ("a text field, not a file", multipart([(b'form-data; name="inputFile"', PHOTO)]), {}),
    ("no name", multipart([(b'form-data; filename="a.jpg"', PHOTO)]), {}),
    ("two files in inputFile", multipart([file_part("inputFile", "a.jpg"), file_part("inputFile", "b.jpg")]), {}),
    ("too many parts", multipart([file_part("inputFile", f"{i}.jpg", b"x") for i in range(200)]), {}),
    ("unquoted and broken disposition", multipart([(b"form-data; name=inputFile; filename=a.jpg", PHOTO)]), {}),
    ("header without a colon", f"--{BOUNDARY}\r\nnonsense\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode(), {}),
    ("JSON, not multipart", b'{"inputFile": "x"}', {"content_type": "application/json"}),
    ("urlencoded", b"inputFile=x", {"content_type": "application/x-www-form-urlencoded"}),
    ("garbage content type", multipart([file_part("inputFile", "a.jpg")]), {"content_type": "\x01;;=;boundary"}),
    ("Content-Length smaller than the body", multipart([file_part("inputFile", "a.jpg")]), {"Content-Length": "10"}),
    ("Content-Length far over the limit", multipart([file_part("inputFile", "a.jpg")]), {"Content-Length": "9" * 18}),
    ("Content-Length not a number", multipart([file_part("inputFile", "a.jpg")]), {"Content-Length": "-1"}),
)


async def test_multipart_and_header_edge_cases_never_give_5xx_and_leave_nothing() -> None:
    async with running_web() as web:
        for label, body, headers in MULTIPART_CASES:
            for route in ROUTES:
                before = await stored(web)
                reply = await post_raw(web, route, body, **headers)
                assert reply.status_code < 500, (label, route, reply.status_code, reply.text[:200])
                if reply.status_code >= 400:
                    assert await stored(web) == before, (label, route)


async def test_duplicate_authorization_headers_are_4xx_on_every_route() -> None:
    async with running_web() as web:
        for route in ROUTES:
            reply = await web.client.post(
                route,
                content=form_for(route, "a.jpg"),
                headers=[
                    ("Content-Type", f"multipart/form-data; boundary={BOUNDARY}"),
                    ("Authorization", "Bearer a"),
                    ("Authorization", "Bearer b"),
                ],
            )
            assert reply.status_code == 400, (route, reply.status_code, reply.text[:200])
        assert await stored(web) == 0
