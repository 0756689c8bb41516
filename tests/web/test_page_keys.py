"""The page on a server that needs an API key: it asks for one on 401, keeps it in the tab's session storage
only, and sends it with every API call (headless Chromium, real app, key made by `facerec keys create`)."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from facerec.backend import open_data_tier
from facerec.cli import main
from facerec.messages import RecognitionResult
from facerec.testing import jpeg_bytes
from tests.web.browser import PageProblems, ScriptedWorker, chromium, require_browser, serving

TIMEOUT_MS = 5_000


def test_the_page_asks_for_a_key_and_keeps_it_in_session_storage_only(tmp_path: Path) -> None:
    require_browser()
    from playwright.sync_api import expect

    data_dir = tmp_path / "data"
    created = CliRunner().invoke(main, ["keys", "create", "--role", "manage", "--data-dir", str(data_dir)])
    assert created.exit_code == 0, created.output
    key = created.stdout.splitlines()[-1]
    worker = ScriptedWorker()
    photo = jpeg_bytes((1, 2, 3))
    worker.register(photo, RecognitionResult(name="Ada_Lovelace", distance=0.5, probability=1.0))
    with (
        serving(worker, open_data_tier, backend="local", data_dir=data_dir, require_key="recognize") as base_url,
        chromium(tmp_path / "profile") as context,
    ):
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        problems = PageProblems(page)
        page.goto(base_url + "/")
        expect(page.locator("#key-panel")).to_be_visible()  # the people list already answered 401
        files = [{"name": "ada.jpg", "mimeType": "image/jpeg", "buffer": photo}]
        page.set_input_files("#recognize-file", files=files)
        expect(page.locator("#recognize-status")).to_have_text(re.compile("needs an API key"))

        page.fill("#api-key", key)
        page.get_by_role("button", name="Use key").click()
        expect(page.locator("#key-status")).to_have_text(re.compile("this tab only"))
        page.set_input_files("#recognize-file", files=files)
        expect(page.locator("#result-name")).to_have_text("Ada_Lovelace")
        expect(page.locator("#people-status")).to_have_text(re.compile("enrolled", re.I))

        assert page.evaluate("sessionStorage.getItem('facerec.apiKey')") == key
        assert page.evaluate("localStorage.length") == 0
        assert page.input_value("#api-key") == ""  # not left on screen
        page.get_by_role("button", name="Forget key").click()
        assert page.evaluate("sessionStorage.getItem('facerec.apiKey')") is None
        assert problems.messages == []
