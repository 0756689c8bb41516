"""Person names: one rule (`facerec.validation.person_name`) for the API, `facerec enroll`, the worker and keys."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest

from facerec import people, validation
from facerec.cli.enroll import person_photos
from facerec.messages import RecognitionRequest
from facerec.testing import jpeg_bytes
from facerec.worker.batch import enrollment_problem
from tests.web.harness import running_web

REJECTED = [
    "",
    "   ",
    ".",
    "..",
    " .. ",
    "\t..\n",
    "a:b",
    "Ada: Lovelace",
    "a/b",
    "a\\b",
    "tab\there",
    "line\nbreak",
    "carriage\rreturn",
    "nul\x00byte",
    "next\x85line",  # NEL (Cc)
    "line\u2028separator",  # Zl
    "para\u2029separator",  # Zp
    "\u202eecilA",  # right-to-left override (Cf): would display as another name
    "soft\u00adhyphen",  # Cf
    "private\ue000use",  # Co
    "x" * (validation.NAME_MAX_CHARS + 1),
    "é" * 41,  # 41 characters, but 246 once percent-encoded
]

ACCEPTED = {
    "Ada Lovelace": "Ada Lovelace",
    "  Ada Lovelace  ": "Ada Lovelace",
    "Zoë Saldaña": "Zoë Saldaña",
    "José María Aznar": "José María Aznar",
    "O'Brien": "O'Brien",
    "Nguyễn Văn A": "Nguyễn Văn A",
    "李小龍": "李小龍",
    "50% off": "50% off",
    "...": "...",
    ".hidden": ".hidden",
    "Zoe\u0308": "Zoë",  # decomposed diaeresis: NFC makes one canonical name
    "\u0645\u06cc\u200c\u0631\u0648\u0645": "\u0645\u06cc\u200c\u0631\u0648\u0645",  # Persian, with a ZWNJ
    "x" * validation.NAME_MAX_CHARS: "x" * validation.NAME_MAX_CHARS,
}


@pytest.mark.parametrize("raw", REJECTED)
def test_rejected_names_say_which_characters_are_allowed(raw: str) -> None:
    with pytest.raises(validation.InvalidPersonName) as raised:
        validation.person_name(raw)
    assert isinstance(raised.value, ValueError)
    assert validation.ALLOWED_NAME_CHARS in str(raised.value)
    with pytest.raises(validation.InvalidPersonName):
        people.person_key(raw)  # no gallery key can be built from it either


@pytest.mark.parametrize(("raw", "canonical"), ACCEPTED.items())
def test_accepted_names_and_their_keys(raw: str, canonical: str) -> None:
    assert validation.person_name(raw) == canonical
    key = people.embedding_key(raw, "0" * 32)
    assert key.count("/") == 2 and "/../" not in key and "/./" not in key
    assert people.parse_embedding_key(key) == (canonical, "0" * 32)


@pytest.mark.parametrize("raw", ["..", " .. ", ".", "a:b", "a\\b", "tab\there", "line\u2028sep", "\u202eecilA"])
async def test_api_refuses_bad_names_with_422_and_stores_nothing(raw: str) -> None:
    async with running_web() as web:
        files = [("photos", ("a.jpg", jpeg_bytes(), "image/jpeg"))]
        path = quote(raw, safe="")
        if raw.strip() in (".", ".."):
            path = path.replace(".", "%2E")  # as a client must send them: raw dot segments are resolved away
        for response in (
            await web.client.post(f"/v1/people/{path}/photos", files=files),
            await web.client.delete(f"/v1/people/{path}"),
        ):
            assert response.status_code == 422, response.text
            error = response.json()["error"]
            assert error["code"] == "invalid_name"
            assert validation.ALLOWED_NAME_CHARS in error["message"]
        assert web.data.gallery is not None
        assert await web.data.gallery.list() == []
        assert (await web.data.requests.stats()).visible == 0


def test_enroll_cli_skips_folders_with_invalid_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for folder in ["Ada Lovelace", "a:b", "Zoë Saldaña"]:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "1.jpg").write_bytes(jpeg_bytes())
    found = person_photos(tmp_path, None)
    assert sorted(found) == ["Ada Lovelace", "Zoë Saldaña"]
    assert "skipped folder 'a:b'" in capsys.readouterr().err


def test_worker_refuses_enroll_requests_with_bad_names_or_keys() -> None:
    photo_id = "a" * 32

    def request(person: str, input_key: str, output_key: str) -> RecognitionRequest:
        return RecognitionRequest(
            id=photo_id,
            input_key=input_key,
            output_key=output_key,
            enqueued_at=0.0,
            kind="enroll",
            person=person,
        )

    good = request("Ada", people.photo_key("Ada", photo_id, ".jpg"), people.embedding_key("Ada", photo_id))
    assert enrollment_problem(good) is None
    dotted = request("..", f"photos/../{photo_id}.jpg", f"embeddings/../{photo_id}.json")
    assert "invalid person name" in (enrollment_problem(dotted) or "")
    elsewhere = request("Ada", people.photo_key("Ada", photo_id, ".jpg"), f"embeddings/Bob/{photo_id}.json")
    assert "do not match" in (enrollment_problem(elsewhere) or "")
