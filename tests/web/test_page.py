"""The browser page: content negotiation on `GET /`, and the page itself driven in headless Chromium."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from facerec.messages import Box, Candidate, FaceRecord, RecognitionResult
from facerec.testing import jpeg_bytes
from facerec.web.page import POINTER
from tests.paths import REPO_ROOT
from tests.web.browser import FakePeopleApi, PageProblems, ScriptedWorker, chromium, require_browser, serving
from tests.web.harness import running_web, upload

SCREENSHOT = REPO_ROOT / "docs" / "web-page.png"
MAX_UPLOAD_BYTES = 400_000
FACE_BOX = Box(x1=84.0, y1=78.0, x2=176.0, y2=194.0)  # a plausible face in a 250x250 LFW portrait
EXPECT_TIMEOUT_MS = 5_000


# ---- content negotiation (no browser) --------------------------------------------------------------------


async def test_get_root_serves_the_page_to_browsers_and_a_pointer_to_everyone_else() -> None:
    browser_accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    async with running_web(max_upload_bytes=MAX_UPLOAD_BYTES) as web:
        page = await web.client.get("/", headers={"Accept": browser_accept})
        curl = await web.client.get("/", headers={"Accept": "*/*"})
        bare = web.client.build_request("GET", "/")
        del bare.headers["Accept"]
        no_accept = await web.client.send(bare)
        script = await web.client.get("/static/app.js")
        style = await web.client.get("/static/style.css")
        escape = await web.client.get("/static/..%2Fpage.py")
        unknown = await web.client.get("/static/index.html")
        course = await web.client.post("/", **upload(jpeg_bytes(), "test_00.jpg"))
        schema = (await web.client.get("/openapi.json")).json()

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["vary"] == "Accept"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert f'data-max-upload-bytes="{MAX_UPLOAD_BYTES}"' in page.text
    for reply in (curl, no_accept):
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/plain")
        assert reply.text == POINTER
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    assert escape.status_code == 404 and unknown.status_code == 404
    assert course.status_code == 200 and course.text.startswith("test_00:")  # POST / is untouched
    assert "Web page" in schema["paths"]["/"]["get"]["summary"]
    assert not any(path.startswith("/static") for path in schema["paths"])


# ---- the page in Chromium --------------------------------------------------------------------------------


def face_photo() -> tuple[str, bytes]:
    """A drawn stand-in portrait: the worker is fake, and the screenshot committed under docs/ must not carry a
    photo from the shared datasets (they are never copied into the repository)."""
    image = Image.new("RGB", (250, 250), (90, 110, 140))
    draw = ImageDraw.Draw(image)
    draw.ellipse((80, 70, 170, 190), fill=(225, 190, 160))
    draw.ellipse((103, 110, 117, 120), fill=(60, 50, 40))
    draw.ellipse((133, 110, 147, 120), fill=(60, 50, 40))
    draw.arc((105, 140, 145, 165), start=20, end=160, fill=(150, 60, 60), width=3)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return "stand_in_face.jpg", buffer.getvalue()


class Site:
    def __init__(self, base_url: str, worker: ScriptedWorker, context: Any) -> None:
        self.base_url = base_url
        self.worker = worker
        self.context = context


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    require_browser()
    worker = ScriptedWorker()
    with (
        serving(worker, max_upload_bytes=MAX_UPLOAD_BYTES) as base_url,
        chromium(tmp_path_factory.mktemp("chromium-profile")) as context,
    ):
        context.set_default_timeout(EXPECT_TIMEOUT_MS)
        yield Site(base_url, worker, context)


@pytest.fixture
def face(site: Site) -> tuple[str, bytes]:
    name, data = face_photo()
    site.worker.register(data, RecognitionResult(name="Abdullah_Gul", distance=0.6123, box=FACE_BOX, probability=1))
    return name, data


@pytest.fixture
def browser_page(site: Site) -> Iterator[tuple[Any, PageProblems]]:
    page = site.context.new_page()
    problems = PageProblems(page)
    try:
        yield page, problems
    finally:
        page.close()


def open_page(page: Any, site: Site, people: FakePeopleApi | None = None) -> None:
    (people or FakePeopleApi()).install(page, site.base_url)
    page.goto(site.base_url + "/")
    page.locator("#people-status").filter(has_text=re.compile(r"enrolled", re.I)).wait_for()


def expect_text(page: Any, selector: str, pattern: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator(selector)).to_have_text(re.compile(pattern), timeout=EXPECT_TIMEOUT_MS)


def recognize(page: Any, filename: str, data: bytes, mime: str = "image/jpeg") -> None:
    page.set_input_files("#recognize-file", files=[{"name": filename, "mimeType": mime, "buffer": data}])


def assert_box_drawn(page: Any, box: Box, natural: tuple[int, int]) -> None:
    photo = page.locator("#recognize-photo").bounding_box()
    overlay = page.locator("#face-box").bounding_box()
    assert photo and overlay, "photo or face box not displayed"
    scale_x, scale_y = photo["width"] / natural[0], photo["height"] / natural[1]
    expected = {
        "x": photo["x"] + box.x1 * scale_x,
        "y": photo["y"] + box.y1 * scale_y,
        "width": (box.x2 - box.x1) * scale_x,
        "height": (box.y2 - box.y1) * scale_y,
    }
    for key, value in expected.items():
        assert overlay[key] == pytest.approx(value, abs=1.5), f"{key}: overlay {overlay}, expected {expected}"


def test_recognition_shows_name_distance_time_and_box_at_any_width(
    site: Site, browser_page: tuple[Any, PageProblems], face: tuple[str, bytes]
) -> None:
    page, problems = browser_page
    open_page(page, site)
    recognize(page, *face)

    expect_text(page, "#recognize-status", r"^Recognized: Abdullah_Gul\.$")
    expect_text(page, "#result-name", r"^Abdullah_Gul$")
    expect_text(page, "#result-distance", r"^0\.612$")
    expect_text(page, "#result-time", r"^\d+ ms$|^\d+\.\d\d s$")
    natural = Image.open(io.BytesIO(face[1])).size
    assert_box_drawn(page, FACE_BOX, natural)

    # The overlay is scaled from original pixels, so it must follow the photo when the layout shrinks.
    wide = page.locator("#recognize-photo").bounding_box()
    page.set_viewport_size({"width": 320, "height": 700})
    narrow = page.locator("#recognize-photo").bounding_box()
    assert narrow["width"] < wide["width"]
    assert_box_drawn(page, FACE_BOX, natural)
    assert page.evaluate("document.documentElement.scrollWidth") <= 320, "horizontal scrolling at 320 px"

    stranger = jpeg_bytes((150, 120, 100), (200, 100))
    stranger_box = Box(x1=60.0, y1=20.0, x2=140.0, y2=90.0)
    site.worker.register(stranger, RecognitionResult(name="Unknown", distance=1.31, box=stranger_box, unknown=True))
    recognize(page, "stranger.jpg", stranger)
    expect_text(page, "#recognize-status", r"^This face does not match anyone enrolled\.$")
    expect_text(page, "#result-distance", r"^1\.310$")
    assert_box_drawn(page, stranger_box, (200, 100))
    assert problems.messages == []


def test_recognition_lists_candidates_and_boxes_every_face(
    site: Site, browser_page: tuple[Any, PageProblems], face: tuple[str, bytes]
) -> None:
    page, problems = browser_page
    open_page(page, site)
    _, photo = face
    group = photo + b"\0"  # the same picture with another digest: scripted as a photo of two people
    bystander = Box(x1=10.0, y1=10.0, x2=60.0, y2=70.0)
    candidates = [Candidate(name="Abdullah_Gul", distance=0.6123), Candidate(name="Hans_Blix", distance=1.2)]
    faces = [
        FaceRecord(box=FACE_BOX, probability=1, name="Abdullah_Gul", distance=0.6123, candidates=candidates),
        FaceRecord(
            box=bystander,
            probability=0.9,
            name="Unknown",
            distance=1.35,
            unknown=True,
            candidates=[Candidate(name="Hans_Blix", distance=1.35)],
        ),
    ]
    site.worker.register(
        group,
        RecognitionResult(
            name="Abdullah_Gul", distance=0.6123, box=FACE_BOX, probability=1, candidates=candidates, faces=faces
        ),
    )
    recognize(page, "group.jpg", group)

    expect_text(page, "#recognize-status", r"^Recognized: Abdullah_Gul\.$")
    assert page.locator("#result-candidates li").all_inner_texts() == ["Abdullah_Gul: 0.612", "Hans_Blix: 1.200"]
    expect_text(page, "#result-faces", r"Unknown \(1\.350\)")
    assert page.locator("#result-faces li").count() == 2
    assert "(the main face)" in page.locator("#result-faces li").first.inner_text()
    natural = Image.open(io.BytesIO(photo)).size
    assert_box_drawn(page, FACE_BOX, natural)
    others = page.locator("#other-faces .face-box")
    assert others.count() == 1
    shown = page.locator("#recognize-photo").bounding_box()
    drawn = others.first.bounding_box()
    assert drawn["x"] == pytest.approx(shown["x"] + bystander.x1 * shown["width"] / natural[0], abs=1.5)
    assert drawn["width"] == pytest.approx((bystander.x2 - bystander.x1) * shown["width"] / natural[0], abs=1.5)
    assert [r.top_k for r in site.worker.requests if r.input_key.startswith("group")][-1] == 3

    # A photo of one face: no list of faces, no extra boxes.
    from playwright.sync_api import expect

    recognize(page, *face)
    expect(page.locator("#faces-block")).to_be_hidden()
    expect(page.locator("#candidates-block")).to_be_hidden()  # the scripted answer lists no candidates
    assert page.locator("#other-faces .face-box").count() == 0
    assert problems.messages == []


def compare(page: Any, first: tuple[str, bytes], second: tuple[str, bytes]) -> None:
    page.set_input_files("#compare-file1", files=[{"name": first[0], "mimeType": "image/jpeg", "buffer": first[1]}])
    page.set_input_files("#compare-file2", files=[{"name": second[0], "mimeType": "image/jpeg", "buffer": second[1]}])
    page.get_by_role("button", name="Compare").click()


def test_compare_two_photos_says_same_or_different_with_distance_and_threshold(
    site: Site, browser_page: tuple[Any, PageProblems], face: tuple[str, bytes]
) -> None:
    page, problems = browser_page
    open_page(page, site)
    name, photo = face
    again = photo + b"\0"  # another photo of the same person, for the scripted worker
    site.worker.register(again, RecognitionResult(name="Abdullah_Gul", distance=0.7, box=FACE_BOX, probability=1))
    other = jpeg_bytes((150, 120, 100), (200, 100))
    site.worker.register(other, RecognitionResult(name="Hans_Blix", distance=0.5, box=FACE_BOX, probability=1))

    page.get_by_role("button", name="Compare").click()
    expect_text(page, "#compare-status", r"^Please choose two photos to compare\.$")

    compare(page, (name, photo), ("again.jpg", again))
    expect_text(page, "#compare-status", r"^Same person\.$")
    expect_text(page, "#compare-verdict", r"^Same person$")
    expect_text(page, "#compare-distance", r"^0\.400$")
    expect_text(page, "#compare-threshold", r"^1\.100$")
    assert site.worker.requests[-1].kind == "verify"

    compare(page, (name, photo), ("other.jpg", other))
    expect_text(page, "#compare-verdict", r"^Different people$")
    expect_text(page, "#compare-distance", r"^1\.300$")

    compare(page, (name, photo), ("wall.jpg", jpeg_bytes((40, 160, 90), (120, 90))))
    expect_text(page, "#compare-status", r"^No face found in the second photo\.$")
    assert page.locator("#compare-result").is_hidden()
    compare(page, ("wall.jpg", jpeg_bytes((40, 160, 90), (120, 90))), (name, photo))
    expect_text(page, "#compare-status", r"^No face found in the first photo\.$")
    assert problems.messages == []


def failing_with(status: int, headers: dict[str, str]) -> Callable[[Any], None]:
    def answer(route: Any) -> None:
        route.fulfill(status=status, headers=headers, json={"error": {"code": "test", "message": "from the test"}})

    return answer


def test_failures_are_explained_in_plain_words(site: Site, browser_page: tuple[Any, PageProblems]) -> None:
    page, problems = browser_page
    open_page(page, site)

    recognize(page, "notes.jpg", b"just some text, not a photo", "image/jpeg")
    expect_text(page, "#recognize-status", r"^That file is not an image we can read\.$")
    assert page.locator("#recognize-result").is_hidden()

    # Dropped rather than chosen: the drop zone takes the same path. The worker finds no face in it.
    encoded = base64.b64encode(jpeg_bytes((40, 160, 90), (120, 90))).decode()
    transfer = page.evaluate_handle(
        """(encoded) => {
            const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "wall.jpg", { type: "image/jpeg" }));
            return transfer;
        }""",
        encoded,
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    expect_text(page, "#recognize-status", r"^No face found in this photo\.$")
    expect_text(page, "#result-name", r"^No face$")
    assert page.locator("#face-box").is_hidden()

    recognize(page, "huge.jpg", b"\xff\xd8\xff" + bytes(MAX_UPLOAD_BYTES))
    expect_text(page, "#recognize-status", r"^That photo is too large \(.*\)\. Please choose one under .*\.$")

    # Overload and deadline answers cannot be provoked on demand from a real server: answered in the browser.
    for status, headers, words in [
        (503, {"Retry-After": "2"}, r"busy right now\. Please try again in 2 seconds\.$"),
        (504, {}, r"^That took too long\. Please try again\.$"),
        (502, {}, r"^The service could not process that photo"),
    ]:
        page.route(f"{site.base_url}/v1/recognitions?*", failing_with(status, headers))
        recognize(page, f"photo_{status}.jpg", jpeg_bytes())
        expect_text(page, "#recognize-status", words)
        page.unroute(f"{site.base_url}/v1/recognitions?*")
    assert problems.messages == []


def test_enroll_shows_used_and_rejected_photos_and_manages_the_people_list(
    site: Site, browser_page: tuple[Any, PageProblems]
) -> None:
    page, problems = browser_page
    people = FakePeopleApi({"Ada Lovelace": 3}, rejected={"blurry.jpg": "no face found"})
    open_page(page, site, people)
    expect_text(page, "#people-list", r"Ada Lovelace\s*3 photos")

    page.fill("#enroll-name", "Grace Hopper")
    page.set_input_files(
        "#enroll-photos",
        files=[
            {"name": name, "mimeType": "image/jpeg", "buffer": jpeg_bytes()}
            for name in ("grace_1.jpg", "grace_2.jpg", "blurry.jpg")
        ],
    )
    page.get_by_role("button", name="Enroll").click()

    expect_text(page, "#enroll-status", r"^Enrolled Grace Hopper with 2 photos\. 1 photo rejected\.$")
    assert people.enroll_requests == [("Grace Hopper", ["grace_1.jpg", "grace_2.jpg", "blurry.jpg"])]
    assert page.locator("#enroll-used li").all_inner_texts() == ["grace_1.jpg", "grace_2.jpg"]
    assert page.locator("#enroll-rejected li").all_inner_texts() == ["blurry.jpg: no face found"]
    expect_text(page, "#people-list", r"Grace Hopper\s*2 photos")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete Ada Lovelace").click()
    expect_text(page, "#people-status", r"^Deleted Ada Lovelace\. 1 person enrolled\.$")
    assert people.deleted == ["Ada Lovelace"]
    assert page.locator("#people-list li").count() == 1
    assert page.evaluate("document.activeElement.id") == "people-title"  # focus not lost with the button
    assert problems.messages == []


def test_page_is_usable_with_a_keyboard_and_a_screen_reader(site: Site, browser_page: tuple[Any, PageProblems]) -> None:
    page, problems = browser_page
    open_page(page, site, FakePeopleApi({"Ada Lovelace": 1}))

    unlabelled = page.evaluate(
        "Array.from(document.querySelectorAll('input')).filter((i) => i.labels.length === 0).map((i) => i.id)"
    )
    nameless = page.evaluate(
        "Array.from(document.querySelectorAll('button')).filter((b) => !b.textContent.trim()).length"
    )
    live = page.evaluate("Array.from(document.querySelectorAll('[aria-live=polite]')).map((e) => e.id)")
    assert unlabelled == [] and nameless == 0
    assert {"recognize-status", "enroll-status", "people-status", "compare-status"} <= set(live)

    # Tab order follows the page: the photo chooser first, then the enrollment form.
    focus_order = []
    for _ in range(4):
        page.keyboard.press("Tab")
        focus_order.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    assert focus_order == ["recognize-file", "enroll-name", "enroll-photos", "enroll-submit"]

    # Submitting with the keyboard and nothing filled in explains what is missing instead of failing silently.
    page.focus("#enroll-submit")
    page.keyboard.press("Enter")
    expect_text(page, "#enroll-status", r"^Please type the person's name\.$")
    assert problems.messages == []


def test_screenshot_of_a_recognition(
    site: Site, browser_page: tuple[Any, PageProblems], face: tuple[str, bytes]
) -> None:
    page, problems = browser_page
    people = FakePeopleApi({"Abdullah_Gul": 5, "Amelie_Mauresmo": 5}, rejected={"group.jpg": "more than one face"})
    open_page(page, site, people)
    page.set_viewport_size({"width": 1100, "height": 800})
    page.fill("#enroll-name", "Ann_Veneman")
    page.set_input_files(
        "#enroll-photos",
        files=[{"name": n, "mimeType": "image/jpeg", "buffer": jpeg_bytes()} for n in ("ann_1.jpg", "group.jpg")],
    )
    page.get_by_role("button", name="Enroll").click()
    expect_text(page, "#enroll-status", r"^Enrolled Ann_Veneman")
    recognize(page, *face)
    expect_text(page, "#recognize-status", r"^Recognized: Abdullah_Gul\.$")
    page.locator("#face-box").wait_for(state="visible")

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    shot = Path(SCREENSHOT).read_bytes()
    assert shot.startswith(b"\x89PNG\r\n\x1a\n") and len(shot) > 10_000
    with Image.open(io.BytesIO(shot)) as image:
        assert image.width == 1100 and image.height >= 600
        assert len(set(image.convert("RGB").resize((64, 64)).get_flattened_data())) > 50, "screenshot looks blank"
    assert problems.messages == []


def test_enroll_through_the_real_people_api(
    site: Site, browser_page: tuple[Any, PageProblems], face: tuple[str, bytes]
) -> None:
    """No mocks: the page talks to the app's gallery endpoints and the fake worker's enrollment."""
    page, problems = browser_page
    page.goto(site.base_url + "/")
    page.locator("#people-status").filter(has_text=re.compile(r"enrolled", re.I)).wait_for()
    _, photo = face
    page.fill("#enroll-name", "Abdullah Gul")
    page.set_input_files(
        "#enroll-photos",
        files=[
            {"name": "gul.jpg", "mimeType": "image/jpeg", "buffer": photo},
            {"name": "empty-room.jpg", "mimeType": "image/jpeg", "buffer": jpeg_bytes()},
        ],
    )
    page.get_by_role("button", name="Enroll").click()
    expect_text(page, "#enroll-status", r"^Enrolled Abdullah Gul with 1 photos?\. 1 photos? rejected\.$")
    assert page.locator("#enroll-used li").all_inner_texts() == ["gul.jpg"]
    assert page.locator("#enroll-rejected li").all_inner_texts() == ["empty-room.jpg: no face found in the photo"]
    expect_text(page, "#people-list", r"Abdullah Gul\s*1 photos?")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete Abdullah Gul").click()
    expect_text(page, "#people-status", r"^Deleted Abdullah Gul\.")
    assert page.locator("#people-list li").count() == 0
    assert problems.messages == []


# ---- the API docs in Chromium, with no network ---------------------------------------------------------------

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
# ReDoc always draws its sidebar logo from its CDN; the docs pages' Content-Security-Policy refuses it.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def off_host(url: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme not in ("data", "blob", "about") and parts.hostname not in LOOPBACK


class OffHostRequests:
    """Requests for other hosts. `sent`: those that reached the network layer (aborted here, so the test never
    reaches out) or completed; `refused`: those the page's Content-Security-Policy stopped in the browser."""

    def __init__(self, page: Any) -> None:
        self.sent: list[str] = []
        self.refused: list[str] = []
        page.route("**/*", self._route)
        page.on("requestfinished", lambda request: self._record(self.sent, request.url))
        page.on("requestfailed", self._failed)

    def _record(self, into: list[str], url: str) -> None:
        if off_host(url) and url not in into:
            into.append(url)

    def _route(self, route: Any) -> None:
        if off_host(route.request.url):
            self._record(self.sent, route.request.url)
            route.abort()
        else:
            route.continue_()

    def _failed(self, request: Any) -> None:
        # Chromium reports a policy refusal as a failed request that never left the browser.
        self._record(self.refused if request.failure == "csp" else self.sent, request.url)


def test_api_docs_render_with_no_network(site: Site, browser_page: tuple[Any, PageProblems]) -> None:
    from playwright.sync_api import expect

    page, problems = browser_page
    requests = OffHostRequests(page)

    page.goto(site.base_url + "/docs")
    recognitions = page.locator(".opblock.opblock-post").filter(has=page.locator('[data-path="/v1/recognitions"]'))
    expect(recognitions).to_be_visible()
    recognitions.locator(".opblock-summary").click()  # expanding it draws the schema from /openapi.json
    expect(recognitions.get_by_text("inputFile", exact=True).first).to_be_visible()

    page.goto(site.base_url + "/redoc")
    expect(page.get_by_role("heading", name="Recognize a face (JSON)")).to_be_visible()
    expect(page.get_by_role("heading", name="Recognize a face (course format)")).to_be_visible()

    assert requests.sent == []
    assert set(requests.refused) <= {REDOC_LOGO}
    assert [message for message in problems.messages if REDOC_LOGO not in message] == []


def test_people_from_the_gallery_file_are_shown_read_only(
    site: Site, browser_page: tuple[Any, PageProblems], tmp_path: Path
) -> None:
    """No mocks: a server started with `--gallery` lists the file's people, without a delete button."""
    import numpy as np

    from facerec.recognition.gallery import Gallery, GalleryMeta

    gallery = tmp_path / "gallery.pt"
    names = ["Amelie_Mauresmo", "Hans_Blix"]
    Gallery(names, np.eye(2, 512, dtype=np.float32), GalleryMeta(weights="w", crop_size=160, margin=14)).save(gallery)
    page, problems = browser_page
    with serving(site.worker, gallery=str(gallery)) as base_url:
        page.goto(base_url + "/")
        expect_text(
            page, "#people-status", r"^2 people from the gallery file \(read-only\); nobody enrolled here yet\.$"
        )
        assert page.locator("#people-list li").all_inner_texts() == [
            "Amelie_Mauresmo\nfrom the gallery file",
            "Hans_Blix\nfrom the gallery file",
        ]
        assert page.locator("#people-list button").count() == 0
    assert problems.messages == []
