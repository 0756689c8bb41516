"""The README stays true: its first lines are the two set-up commands, and its settings table lists every setting."""

from __future__ import annotations

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
