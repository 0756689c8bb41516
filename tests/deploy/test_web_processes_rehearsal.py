"""Two web processes of one AWS deployment, in the deploy rehearsal (tests/aws_rehearsal.py) on moto: a second
`facerec serve` joins the first, requests spread over both are each answered to the process that received them
(its own reply queue, named in its requests' `reply_to`), the EC2 pool never exceeds its size, and a clean stop
deletes the second's queue. Before the second started, the one web process made exactly today's resources."""

from __future__ import annotations

import re

import pytest

from tests.aws_rehearsal import POOL, SPREAD_REQUESTS, Rehearsal

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def reply_queue_pattern(rehearsal: Rehearsal) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(rehearsal.prefix)}-resp-[0-9a-f]{{12}}")


def queue_of(call: dict[str, str]) -> str:
    return call.get("QueueName") or str(call.get("QueueUrl", "")).rstrip("/").rsplit("/", 1)[-1]


def test_one_web_process_keeps_todays_resources_and_names(aws_rehearsal: Rehearsal) -> None:
    prefix = aws_rehearsal.prefix
    assert aws_rehearsal.queues_alone == sorted([f"{prefix}-req-dlq", f"{prefix}-req-queue", f"{prefix}-resp-queue"])
    calls = aws_rehearsal.one_process_calls
    assert calls, "the first web process logged no AWS call"
    assert not [c for c in calls if c["operation"] in ("CreateQueue", "DeleteQueue")]
    assert not [c for c in calls if reply_queue_pattern(aws_rehearsal).fullmatch(queue_of(c))]
    # It reads the fixed response queue, as before #15.
    assert any(c["operation"] == "ReceiveMessage" and queue_of(c) == f"{prefix}-resp-queue" for c in calls)


def test_requests_spread_over_two_web_processes_are_answered_to_their_own(aws_rehearsal: Rehearsal) -> None:
    answers = aws_rehearsal.spread_answers
    assert sorted(answers) == ["first", "second"]
    for process, pairs in answers.items():
        assert len(pairs) == SPREAD_REQUESTS, process
        wrong = [(got, want) for got, want in pairs if got != want]
        assert not wrong, (process, wrong, aws_rehearsal.second_log[-3000:])


def test_the_second_web_process_used_its_own_reply_queue(aws_rehearsal: Rehearsal) -> None:
    pattern = reply_queue_pattern(aws_rehearsal)
    created = {queue_of(c) for c in aws_rehearsal.second_calls if c["operation"] == "CreateQueue"}
    assert len(created) == 1 and pattern.fullmatch(next(iter(created))), created
    (own,) = created
    second = aws_rehearsal.second_calls
    assert any(c["operation"] == "ReceiveMessage" and queue_of(c) == own for c in second)
    assert any(c["operation"] == "DeleteQueue" and queue_of(c) == own for c in second)  # its clean stop
    # The workers answered its requests there: found by name, sent to.
    worker = aws_rehearsal.calls["worker"]
    assert any(c["operation"] == "GetQueueUrl" and queue_of(c) == own for c in worker)
    assert any(c["operation"] == "SendMessageBatch" and queue_of(c) == own for c in worker)


def test_a_clean_stop_of_the_second_leaves_todays_queues(aws_rehearsal: Rehearsal) -> None:
    assert aws_rehearsal.second_returncode == 0, aws_rehearsal.second_log[-3000:]
    assert aws_rehearsal.queues_after_second_stopped == aws_rehearsal.queues_alone


def test_the_pool_never_exceeds_its_size(aws_rehearsal: Rehearsal) -> None:
    assert 1 <= aws_rehearsal.most_running <= POOL
