"""The deploy rehearsal (tests/aws_rehearsal.py): the README's AWS section on moto, from provision to teardown."""

from __future__ import annotations

import io
import re
import shlex
import zipfile

import pytest

from tests.aws_rehearsal import CALIBRATION_PHOTOS, NEWCOMER, POOL, REQUESTS, TORCH_INDEX, Rehearsal
from tests.paths import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()

# The first test here runs the rehearsal (about 20 s idle; much longer on a loaded machine).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_every_command_succeeded(aws_rehearsal: Rehearsal) -> None:
    run = [args[0] if args[0] != "aws" else f"aws {args[1]}" for args, _, _ in aws_rehearsal.commands]
    # The second `serve` is a second web process of the deployment (tests/deploy/test_web_processes_rehearsal.py).
    assert run == ["aws provision", "aws status", "enroll", "serve", "serve", "aws teardown"]
    assert all(code == 0 for _, code, _ in aws_rehearsal.commands), aws_rehearsal.commands
    provision_output = aws_rehearsal.commands[0][2]
    assert provision_output.count("created    instance") == POOL, provision_output
    for role in ("web", "worker"):
        assert f"created    role     {aws_rehearsal.prefix}-{role}-role" in provision_output
        assert f"created    profile  {aws_rehearsal.prefix}-{role}-profile" in provision_output


def test_instances_get_the_uploaded_wheel_and_calibration_photos(aws_rehearsal: Rehearsal) -> None:
    """The user data downloads the wheel provision uploaded through a presigned URL (no credentials needed)."""

    url = re.search(r"^wheel_url='([^']+)'$", aws_rehearsal.user_data, re.MULTILINE)
    assert url and "/deploy/facerec-0.0-py3-none-any.whl" in url.group(1)
    assert f"torch_index='{TORCH_INDEX}'" in aws_rehearsal.user_data
    assert aws_rehearsal.wheel_download == b"rehearsal wheel"
    # And the photos to calibrate the int8 model on, the same way.
    with zipfile.ZipFile(io.BytesIO(aws_rehearsal.calibration_download)) as photos:
        assert len(photos.namelist()) == CALIBRATION_PHOTOS


def flags(args: list[str]) -> set[str]:
    return {arg for arg in args if arg.startswith("--")}


def test_the_readme_aws_section_is_what_the_rehearsal_ran(aws_rehearsal: Rehearsal) -> None:
    """Every command of the README's step-by-step AWS section was run by the rehearsal with at least its options."""
    section = README.split("## Deploying on AWS", 1)[1].split("\n## ", 1)[0]
    text = section.replace("\\\n", " ")
    written = [shlex.split(m) for m in re.findall(r"(?:^|[`\s])facerec ((?:aws )?[a-z]+ [^`#\n]*)", text)]
    steps = [args for args in written if args[0] in ("aws", "enroll", "serve") and args[:2] != ["aws", "policy"]]
    assert len(steps) >= 5, steps
    ran = [args for args, _, _ in aws_rehearsal.commands]
    for args in steps:
        name = args[:2] if args[0] == "aws" else args[:1]
        matching = [r for r in ran if r[: len(name)] == name and flags(args) <= flags(r)]
        if "--gallery" in args:  # the gallery-file variant: tests/deploy/test_gallery_store.py
            continue
        assert matching, f"README runs `facerec {shlex.join(args)}`; the rehearsal never did"


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
