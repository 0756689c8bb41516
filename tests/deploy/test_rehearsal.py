"""The deploy rehearsal (tests/aws_rehearsal.py): the README's AWS section on moto, from provision to teardown."""

from __future__ import annotations

import pytest

from tests.aws_rehearsal import NEWCOMER, POOL, REQUESTS, Rehearsal

pytestmark = pytest.mark.slow


def test_every_command_succeeded(aws_rehearsal: Rehearsal) -> None:
    run = [" ".join(args[:2]) for args, _, _ in aws_rehearsal.commands]
    assert run == ["aws provision", "aws status", "enroll " + args_of(aws_rehearsal, "enroll")[1], "aws teardown"]
    provision_output = aws_rehearsal.commands[0][2]
    assert provision_output.count("created    instance") == POOL, provision_output
    for role in ("web", "worker"):
        assert f"created    role     {aws_rehearsal.prefix}-{role}-role" in provision_output
        assert f"created    profile  {aws_rehearsal.prefix}-{role}-profile" in provision_output


def args_of(rehearsal: Rehearsal, command: str) -> list[str]:
    return next(args for args, _, _ in rehearsal.commands if args[0] == command)


def test_workers_ran_with_the_user_data_environment(aws_rehearsal: Rehearsal) -> None:
    environment = aws_rehearsal.worker_environment
    assert environment["FACEREC_BACKEND"] == "aws"
    assert environment["FACEREC_PREFIX"] == aws_rehearsal.prefix
    assert "FACEREC_AWS_ENDPOINT_URL" not in environment  # real instances use AWS itself


def test_all_answers_correct(aws_rehearsal: Rehearsal) -> None:
    assert len(aws_rehearsal.answers) == REQUESTS
    wrong = [(got, want) for got, want in aws_rehearsal.answers if got != want]
    assert not wrong, wrong
    assert aws_rehearsal.enrolled["status"] == 200, aws_rehearsal.enrolled
    assert aws_rehearsal.enrolled["person"] == NEWCOMER[0]


def test_a_person_deleted_during_enrollment_stays_deleted(aws_rehearsal: Rehearsal) -> None:
    assert aws_rehearsal.deleted_while_enrolling == 204
    assert aws_rehearsal.late_enrollment["used"] == [], aws_rehearsal.late_enrollment
    assert "deleted" in aws_rehearsal.late_enrollment["rejected"][0]["reason"], aws_rehearsal.late_enrollment


def test_ctrl_c_scales_the_fleet_to_zero(aws_rehearsal: Rehearsal) -> None:
    assert aws_rehearsal.running_before_stop >= 1, "the requests should have started instances"
    assert aws_rehearsal.serve_returncode == 0, aws_rehearsal.serve_log[-3000:]
    assert aws_rehearsal.running_after_stop == 0, aws_rehearsal.serve_log[-3000:]
    assert "workers_stopped_on_exit" in aws_rehearsal.serve_log


def test_teardown_leaves_nothing_with_the_prefix(aws_rehearsal: Rehearsal) -> None:
    assert aws_rehearsal.leftovers == {"buckets": [], "queues": [], "instances": [], "roles": [], "profiles": []}
