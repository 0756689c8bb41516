"""`/v1/recognitions?top_k` with every face, and `/v1/verifications`, through the web tier with the fake worker."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from facerec.messages import (
    MAX_MESSAGE_BYTES,
    Box,
    Candidate,
    FaceRecord,
    RecognitionRequest,
    RecognitionResponse,
    RecognitionResult,
    Timings,
)
from facerec.testing import FAKE_VERIFICATION_THRESHOLD, jpeg_bytes
from tests.web.harness import Switch, flaky_data_tier, running_web, upload

SUBJECT = Box(x1=10.0, y1=10.0, x2=50.0, y2=60.0)
BYSTANDER = Box(x1=70.0, y1=5.0, x2=90.0, y2=30.0)
PAUL, ANA, WALL = jpeg_bytes((200, 30, 30)), jpeg_bytes((30, 200, 30)), jpeg_bytes((90, 90, 90))
NAMES = {hashlib.sha256(PAUL).digest(): "Paul", hashlib.sha256(ANA).digest(): "Ana"}


class Recorder:
    """Answers like a worker that found the subject and a bystander (when asked for every face), with as many
    candidates as asked for; a photo it does not know has no face. Records every request it saw."""

    def __init__(self) -> None:
        self.requests: list[RecognitionRequest] = []

    def __call__(self, request: RecognitionRequest, data: bytes) -> RecognitionResponse:
        self.requests.append(request)
        name = NAMES.get(hashlib.sha256(data).digest())
        if name is None:
            result = RecognitionResult(name="NoFace", no_face=True)
        else:
            k = request.top_k or 1
            candidates = [Candidate(name=n, distance=0.5 + i / 2) for i, n in enumerate([name, "Bo", "Cy"][:k])]
            faces = None
            if request.all_faces:
                faces = [
                    FaceRecord(box=SUBJECT, probability=0.99, name=name, distance=0.5, candidates=candidates),
                    FaceRecord(
                        box=BYSTANDER,
                        probability=0.9,
                        name="Unknown",
                        distance=1.4,
                        unknown=True,
                        candidates=[Candidate(name="Cy", distance=1.4)][:k],
                    ),
                ]
            result = RecognitionResult(
                name=name, distance=0.5, box=SUBJECT, probability=0.99, candidates=candidates, faces=faces
            )
        return RecognitionResponse(id=request.id, result=result, timings=Timings(inference_s=0.0), worker="rec")


def verify_files(first: bytes | None, second: bytes | None = None) -> dict[str, Any]:
    files = {}
    if first is not None:
        files["image1"] = ("first.jpg", first, "image/jpeg")
    if second is not None:
        files["image2"] = ("second.jpg", second, "image/jpeg")
    return files


# ---- candidates and every face ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "11", "-1", "three", "1.5"])
async def test_top_k_out_of_range_is_422_with_a_message(value: str) -> None:
    recorder = Recorder()
    async with running_web(recorder) as web:
        reply = await web.client.post(f"/v1/recognitions?top_k={value}", **upload(PAUL))
    assert reply.status_code == 422
    error = reply.json()["error"]
    assert error["code"] == "invalid_parameter" and error["message"].startswith("top_k: ")
    assert recorder.requests == []  # refused before anything was stored or sent


async def test_recognitions_list_candidates_and_every_face_while_post_root_is_unchanged() -> None:
    recorder = Recorder()
    async with running_web(recorder) as web:
        plain = await web.client.post("/", **upload(PAUL, "test_00.jpg"))
        default = await web.client.post("/v1/recognitions", **upload(PAUL))
        three = await web.client.post("/v1/recognitions?top_k=3", **upload(PAUL))
        ten = await web.client.post("/v1/recognitions?top_k=10", **upload(PAUL))
        nothing = await web.client.post("/v1/recognitions?top_k=2", **upload(WALL))

    assert plain.status_code == 200 and plain.text == "test_00:Paul"
    asked = [(r.top_k, r.all_faces) for r in recorder.requests]
    assert asked == [(None, None), (1, True), (3, True), (10, True), (2, True)]
    assert len(recorder.requests[0].to_json()) < MAX_MESSAGE_BYTES

    assert default.status_code == 200
    assert default.json()["candidates"] == [{"name": "Paul", "distance": 0.5}]
    body = three.json()
    # The top-level fields stay the subject face's (backward compatible).
    assert (body["name"], body["distance"], body["box"]) == ("Paul", 0.5, SUBJECT.model_dump())
    assert body["candidates"] == [
        {"name": "Paul", "distance": 0.5},
        {"name": "Bo", "distance": 1.0},
        {"name": "Cy", "distance": 1.5},
    ]
    assert [face["name"] for face in body["faces"]] == ["Paul", "Unknown"]
    assert set(body["faces"][1]) == {"box", "probability", "name", "distance", "unknown", "candidates"}
    assert body["faces"][1]["unknown"] is True and body["faces"][1]["box"] == BYSTANDER.model_dump()
    assert ten.status_code == 200
    assert nothing.json()["no_face"] is True and nothing.json()["faces"] == []
    assert nothing.json()["candidates"] == []


# ---- verification ----------------------------------------------------------------------------------------------


async def test_two_photos_are_stored_and_verified_in_one_request() -> None:
    async with running_web(Recorder()) as web:
        same = await web.client.post("/v1/verifications", files=verify_files(PAUL, PAUL))
        different = await web.client.post("/v1/verifications", files=verify_files(PAUL, ANA))
        stored = await web.data.inputs.list()
        outputs = await web.data.outputs.list()

    assert same.status_code == 200, same.text
    body = same.json()
    assert (body["same"], body["distance"], body["threshold"]) == (True, 0.4, FAKE_VERIFICATION_THRESHOLD)
    assert [face["image"] for face in body["faces"]] == ["image1", "image2"]
    assert body["faces"][0]["box"] == SUBJECT.model_dump() and body["person"] is None
    assert different.json()["same"] is False and different.json()["distance"] == 1.3
    # Kept like recognition inputs: two per verification, the second marked as such; no out-bucket object.
    assert len(stored) == 4 and sum(key.startswith("second-") and "-2." in key for key in stored) == 2
    assert outputs == []


async def test_a_photo_is_verified_against_an_enrolled_person() -> None:
    async with running_web(Recorder()) as web:
        enrolled = await web.client.post("/v1/people/Paul/photos", files={"photos": ("p.jpg", PAUL, "image/jpeg")})
        assert enrolled.status_code == 200, enrolled.text
        same = await web.client.post("/v1/verifications", files=verify_files(PAUL), data={"person": " Paul "})
        other = await web.client.post("/v1/verifications", files=verify_files(ANA), data={"person": "Paul"})
        nobody = await web.client.post("/v1/verifications", files=verify_files(ANA), data={"person": "Nobody"})

    assert same.status_code == 200, same.text
    assert same.json()["same"] is True and same.json()["person"] == "Paul"
    assert [face["image"] for face in same.json()["faces"]] == ["image1"]
    assert other.status_code == 200 and other.json()["same"] is False
    assert nobody.status_code == 404
    assert nobody.json()["error"]["code"] == "unknown_person" and "'Nobody'" in nobody.json()["error"]["message"]


@pytest.mark.parametrize(
    ("files", "data", "status", "code", "words"),
    [
        (verify_files(PAUL, WALL), {}, 422, "no_face", "image2"),
        (verify_files(WALL, PAUL), {}, 422, "no_face", "image1"),
        (verify_files(PAUL, PAUL), {"person": "Paul"}, 422, "bad_form", "not both"),
        (verify_files(PAUL), {}, 422, "bad_form", "'person'"),
        (verify_files(None, PAUL), {}, 422, "missing_field", "'image1'"),
        (verify_files(PAUL), {"person": "a/b"}, 422, "invalid_person", "('/')"),
        (verify_files(b"not an image", PAUL), {}, 415, "not_an_image", "image"),
    ],
    ids=["no-face-2", "no-face-1", "both", "neither", "no-image1", "bad-name", "not-an-image"],
)
async def test_verification_errors_are_clear(
    files: dict[str, Any], data: dict[str, str], status: int, code: str, words: str
) -> None:
    async with running_web(Recorder()) as web:
        reply = await web.client.post("/v1/verifications", files=files, data=data)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == code and words in error["message"], error


async def test_no_orphan_inputs_when_the_request_cannot_be_sent() -> None:
    queue = Switch(frozenset({"send"}))
    async with running_web(Recorder(), data_tier=flaky_data_tier(Switch(), queue)) as web:
        queue.failing = True
        reply = await web.client.post("/v1/verifications", files=verify_files(PAUL, ANA))
        left = await web.data.inputs.list()
    assert reply.status_code == 503 and "request queue" in reply.json()["error"]["message"]
    assert left == []


async def test_the_largest_verify_request_fits_the_request_queue() -> None:
    long_name = "ü" * 200 + ".jpeg"
    recorder = Recorder()
    async with running_web(recorder) as web:
        files = {
            "image1": (long_name, PAUL, "image/jpeg"),
            "image2": (long_name, PAUL, "image/jpeg"),
        }
        reply = await web.client.post("/v1/verifications", files=files)
    assert reply.status_code == 200, reply.text
    assert len(recorder.requests) == 2  # the fake asks its answerer once per photo
    assert len(recorder.requests[0].to_json().encode()) <= MAX_MESSAGE_BYTES


# ---- OpenAPI ---------------------------------------------------------------------------------------------------


async def test_openapi_documents_top_k_candidates_faces_and_verifications() -> None:
    async with running_web() as web:
        schema = (await web.client.get("/openapi.json")).json()
    recognitions = schema["paths"]["/v1/recognitions"]["post"]
    (top_k,) = [p for p in recognitions["parameters"] if p["name"] == "top_k"]
    assert top_k["in"] == "query" and top_k["description"]
    assert (top_k["schema"]["minimum"], top_k["schema"]["maximum"], top_k["schema"]["default"]) == (1, 10, 1)
    assert "top_k" in recognitions["responses"]["422"]["description"]
    out = schema["components"]["schemas"]["RecognitionOut"]["properties"]
    assert out["candidates"]["description"] and out["faces"]["description"]
    assert {"FaceRecord", "Candidate", "VerificationOut", "VerifiedFace"} <= set(schema["components"]["schemas"])

    verifications = schema["paths"]["/v1/verifications"]["post"]
    assert verifications["summary"] and verifications["description"]
    form = verifications["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(form["properties"]) == {"image1", "image2", "person"} and form["required"] == ["image1"]
    assert {"404", "422", "503"} <= set(verifications["responses"])
    assert "no_face" in verifications["responses"]["422"]["description"]
    assert "unknown_person" in verifications["responses"]["404"]["description"]
    assert verifications["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "VerificationOut"
    )
