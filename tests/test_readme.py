"""The README stays true: its first lines are the two set-up commands, and its settings table lists every setting."""

from __future__ import annotations

import re

from facerec.settings import Settings
from tests.paths import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def test_first_lines_install_and_serve_then_test() -> None:
    block = README.split("```")[1]
    assert "pip install -e '.[all]' && facerec serve" in block
    assert "pip install -e '.[all,test]' && python -m pytest -q" in block


def test_every_setting_is_documented() -> None:
    missing = [name for name in Settings.model_fields if f"`FACEREC_{name.upper()}`" not in README]
    assert not missing, f"add these settings to the README's table: {missing}"


def test_every_command_is_in_the_commands_table() -> None:
    from facerec.cli import _COMMANDS
    from facerec.cli.bench import _BENCHMARKS

    table = README.split("## Commands", 1)[1].split("\n\n", 2)[1]
    rows = {line.split("`")[1].split()[1]: line for line in table.splitlines() if line.startswith("| `facerec ")}
    assert sorted(rows) == sorted(_COMMANDS)
    bench_usage = rows["bench"].split("`")[1].replace("\\|", " ").split()  # `facerec bench model \| worker ...`
    missing = [name for name in _BENCHMARKS if name not in bench_usage]
    assert not missing, f"add these benchmarks to the README's commands table: {missing}"


def test_the_architecture_sketch_states_the_default_batch() -> None:
    stated = re.search(r"receive up to (\d+) requests", README)
    assert stated is not None, "the sketch under 'How it works' no longer says how many requests a worker receives"
    assert int(stated.group(1)) == Settings.model_fields["batch_max"].default


def test_nothing_cites_a_design_document_the_repository_does_not_have() -> None:
    missing = "DESIGN" + ".md"  # spelled apart so that this file does not cite it either
    if (REPO_ROOT / missing).exists():
        return
    texts = [REPO_ROOT / "README.md", *(REPO_ROOT / "docs").rglob("*.md")]
    texts += [*(REPO_ROOT / "src").rglob("*.py"), *(REPO_ROOT / "tests").rglob("*.py")]
    citing = [str(path.relative_to(REPO_ROOT)) for path in texts if missing in path.read_text(encoding="utf-8")]
    assert not citing, f"these files cite {missing}, which is not in the repository: {citing}"
