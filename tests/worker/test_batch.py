"""Mapping messages and outcomes to answers (pure functions)."""

from __future__ import annotations

import time

from facerec.messages import ErrorCode, RecognitionRequest
from facerec.ports import ReceivedMessage
from facerec.recognition.results import FaceResult, ImageRejected
from facerec.worker.batch import Answer, Discard, Job, outcome_answer, triage

REQUEST_ID = "a" * 32


def delivery(body: str, receive_count: int = 1) -> ReceivedMessage:
    return ReceivedMessage("m1", body, "r1", receive_count)


def request(deadline: float | None = None) -> RecognitionRequest:
    return RecognitionRequest(
        id=REQUEST_ID, input_key="x-aaaa.jpg", output_key="x-aaaa", enqueued_at=time.time() - 2, deadline=deadline
    )


def test_triage_sorts_jobs_expired_and_invalid_bodies() -> None:
    now = time.time()
    assert isinstance(triage(delivery(request().to_json()), now, "w"), Job)
    assert isinstance(triage(delivery(request(deadline=now + 5).to_json()), now, "w"), Job)
    expired = triage(delivery(request(deadline=now - 1).to_json()), now, "w")
    assert isinstance(expired, Answer) and expired.response.error.code == ErrorCode.DEADLINE_EXCEEDED
    assert expired.response.timings.queue_wait_s >= 1.9
    for body in ("", "[]", '"text"', "{}", '{"id": "not-hex"}', '{"id": 7}'):
        assert isinstance(triage(delivery(body), now, "w"), Discard), body
    answerable = triage(delivery(f'{{"id": "{REQUEST_ID}", "v": 99}}'), now, "w")
    assert isinstance(answerable, Answer) and answerable.response.error.code == ErrorCode.PROCESSING_FAILED


def test_outcomes_map_to_results_and_typed_errors() -> None:
    job = Job(delivery(request().to_json()), request(), time.time())
    face = outcome_answer(job, FaceResult("Paul", 0.61, (1, 2, 3, 4), 0.98), 0.5, "w")
    assert face.output == ("x-aaaa", "Paul") and face.response.result.box.x2 == 3
    assert face.response.timings.inference_s == 0.5
    too_large = outcome_answer(job, ImageRejected("image_too_large", "too many pixels"), 0.1, "w")
    assert too_large.output is None and too_large.response.error.code == ErrorCode.IMAGE_TOO_LARGE
    unknown_code = outcome_answer(job, ImageRejected("something_new", "?"), 0.1, "w")
    assert unknown_code.response.error.code == ErrorCode.NOT_AN_IMAGE


def test_long_names_still_fit_a_queue_message() -> None:
    job = Job(delivery(request().to_json()), request(), time.time())
    answer = outcome_answer(job, FaceResult("Ž" * 500, 0.7, (0, 0, 1, 1), 0.9), 0.1, "w" * 200)
    assert len(answer.response.to_json().encode()) <= 1024
