"""What the commands tell a new user: help texts that read right, and no empty lines of output."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from facerec.cli import main


def help_text(*command: str) -> str:
    result = CliRunner().invoke(main, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # click wraps lines: compare words, not layout


def test_recognize_gallery_option_says_what_it_is() -> None:
    assert "--gallery FILE Gallery file made by `facerec enroll`" in help_text("recognize")


def test_serve_max_workers_default_does_not_read_as_a_division() -> None:
    text = help_text("serve")
    assert "(default: the number of cores locally, 15 on AWS)" in text
    assert "cores / 15" not in text


def test_weights_info_prints_a_problem_line_only_when_there_is_a_problem(tmp_path: Path) -> None:
    runner = CliRunner()
    unconverted = runner.invoke(main, ["weights", "info", "--cache-dir", str(tmp_path / "empty")])
    assert unconverted.exit_code == 0, unconverted.output
    assert "problem: not converted yet" in unconverted.output
    assert all(line.split(":", 1)[1].strip() for line in unconverted.output.splitlines()), unconverted.output

    ready = runner.invoke(main, ["weights", "info"])  # the prepared cache
    assert ready.exit_code == 0, ready.output
    if "ready: True" not in ready.output:
        return  # weights not prepared on this machine: the line above already showed a problem is printed
    assert "problem" not in ready.output
