"""The worker's candidates, every face and verification, with the fake recognizer (no model)."""

from __future__ import annotations

from facerec.messages import ErrorCode, RecognitionResponse
from facerec.recognition.results import Wanted
from facerec.worker.loop import Worker
from tests.worker.fakes import (
    BYSTANDER_BOX,
    FAKE_THRESHOLD,
    FakeRecognizer,
    collect,
    faceless_photo,
    make_settings,
    memory_tier,
    photo_of,
    running,
    submit,
)


async def test_top_k_and_every_face_travel_to_the_recognizer_and_back() -> None:
    data = memory_tier()
    recognizer = FakeRecognizer()
    plain = await submit(data, "plain.jpg", photo_of("Paul"))
    wide = await submit(data, "wide.jpg", photo_of("Ana"), top_k=2, all_faces=True)
    worker = Worker(data, recognizer, make_settings(batch_fill_wait_ms=200))
    async with running(worker):
        responses = {r.id: r for r in await collect(data, expected=2)}

    asked = [wish for wishes in recognizer.wanted for wish in wishes or []]
    assert sorted(asked, key=lambda w: w.top_k) == [Wanted(1, False), Wanted(2, True)]
    first = responses[plain.id].result
    assert first is not None and first.name == "Paul" and first.faces is None
    result = responses[wide.id].result
    assert result is not None and result.name == "Ana"
    assert [(c.name, c.distance) for c in result.candidates or []] == [("Ana", 0.2), ("Bo", 1.2)]
    assert result.faces is not None and [face.name for face in result.faces] == ["Ana", "Bo"]
    assert result.faces[1].box.x1 == BYSTANDER_BOX[0] and len(result.faces[1].candidates) == 2
    # The course's out-bucket object is still the subject's name alone.
    assert await data.outputs.get(wide.output_key) == b"Ana"


async def test_verification_of_two_photos_or_a_photo_and_a_person() -> None:
    data = memory_tier()
    recognizer = FakeRecognizer()
    same = await submit(data, "a.jpg", photo_of("Paul"), kind="verify", second=photo_of("Paul"))
    different = await submit(data, "b.jpg", photo_of("Paul"), kind="verify", second=photo_of("Ana"))
    person = await submit(data, "c.jpg", photo_of("Bo"), kind="verify", person="Bo")
    stranger = await submit(data, "d.jpg", photo_of("Bo"), kind="verify", person="Zed")
    no_face = await submit(data, "e.jpg", photo_of("Bo"), kind="verify", second=faceless_photo())
    missing = await submit(data, "f.jpg", photo_of("Bo"), kind="verify", second=None, person=None)
    recognize = await submit(data, "g.jpg", photo_of("Ana"))
    worker = Worker(data, recognizer, make_settings(batch_fill_wait_ms=200))
    async with running(worker):
        responses: dict[str, RecognitionResponse] = {r.id: r for r in await collect(data, expected=7)}

    def verdict(request_id: str) -> tuple[bool, float]:
        verification = responses[request_id].verification
        assert verification is not None, responses[request_id]
        assert verification.threshold == FAKE_THRESHOLD
        return verification.same, verification.distance

    assert verdict(same.id) == (True, 0.3)
    assert verdict(different.id) == (False, 1.4)
    assert verdict(person.id) == (True, 0.3)
    two_faces = responses[same.id].verification
    assert two_faces is not None and [face.image for face in two_faces.faces] == ["image1", "image2"]
    one_face = responses[person.id].verification
    assert one_face is not None and [face.image for face in one_face.faces] == ["image1"]

    def error(request_id: str) -> tuple[ErrorCode, str]:
        answer = responses[request_id].error
        assert answer is not None, responses[request_id]
        return answer.code, answer.message

    assert error(stranger.id) == (ErrorCode.UNKNOWN_PERSON, "'Zed' is not enrolled")
    assert error(no_face.id) == (ErrorCode.NO_FACE, "no face found in image2")
    assert error(missing.id)[0] == ErrorCode.UNKNOWN_PERSON  # no second photo and no person: nobody to match
    assert responses[recognize.id].result is not None and responses[recognize.id].result.name == "Ana"
    assert sum(recognizer.verified) == 6
    # A verification writes no out-bucket object; a recognition still does.
    assert await data.outputs.list() == [recognize.output_key]


async def test_a_verification_whose_second_photo_is_gone_is_answered_input_missing() -> None:
    data = memory_tier()
    request = await submit(data, "a.jpg", photo_of("Paul"), kind="verify", second=photo_of("Paul"))
    assert request.input_key2 is not None
    await data.inputs.delete(request.input_key2)
    async with running(Worker(data, FakeRecognizer(), make_settings())):
        (response,) = await collect(data, expected=1)
    assert response.error is not None and response.error.code == ErrorCode.INPUT_MISSING


async def test_a_recognizer_without_verify_answers_processing_failed() -> None:
    class OldRecognizer:
        def recognize(self, images):  # type: ignore[no-untyped-def]
            return FakeRecognizer().recognize(images)

    data = memory_tier()
    request = await submit(data, "a.jpg", photo_of("Paul"), kind="verify", person="Paul")
    plain = await submit(data, "b.jpg", photo_of("Paul"))
    async with running(Worker(data, OldRecognizer(), make_settings())):
        responses = {r.id: r for r in await collect(data, expected=2)}
    failed = responses[request.id].error
    assert failed is not None and failed.code == ErrorCode.PROCESSING_FAILED and "verification" in failed.message
    assert responses[plain.id].result is not None and responses[plain.id].result.name == "Paul"


async def test_a_recognizer_without_wanted_still_answers_recognitions_that_ask_for_more() -> None:
    class OldRecognizer:
        def recognize(self, images):  # type: ignore[no-untyped-def]
            return FakeRecognizer().recognize(images)

    data = memory_tier()
    request = await submit(data, "a.jpg", photo_of("Ana"), top_k=3, all_faces=True)
    async with running(Worker(data, OldRecognizer(), make_settings())):
        (response,) = await collect(data, expected=1)
    assert response.result is not None and response.result.name == "Ana"
    assert response.result.candidates is None and response.result.faces is None
    assert request.top_k == 3
