"""The package as users install it: a built wheel in a fresh venv, run from a folder outside the repository.

An editable install (what development uses) reads files straight from the source tree, so it cannot show that
a file the package needs is missing from the wheel. This test installs the real wheel and makes sure the copy
that runs is the installed one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.paths import REPO_ROOT

pytestmark = pytest.mark.slow
ACCOUNT = "123456789012"


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{argv} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def build_wheel(tmp: Path) -> Path:
    """Build from a copy holding only what Dockerfile.web copies (pyproject, README, src): building in the
    repository would leave build/ and egg-info there, and a file outside those three must not be needed."""
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp / "dist"
    # No build isolation: it would fetch setuptools from the network; the test environment already has it.
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)]
    run([*pip_wheel, str(source)], cwd=tmp)
    (wheel,) = dist.glob("facerec-*.whl")
    return wheel


def install_in_venv(wheel: Path, root: Path) -> Path:
    """A venv holding the wheel, which then borrows this interpreter's dependencies. Returns its bin folder.

    The borrowed site-packages goes on sys.path through a plain `.pth` line: .pth files inside it (the
    editable facerec's among them) are not processed, so the source tree cannot shadow the wheel."""
    venv.EnvBuilder(with_pip=False).create(root)
    python = root / "bin" / "python"
    # Installed before the borrowed path is added, so pip sees no facerec already there to skip or replace.
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)], cwd=root)
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=root)
    (Path(purelib.stdout.strip()) / "borrowed-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return root / "bin"


class Installed:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = install_in_venv(build_wheel(root), root / "venv")
        self.elsewhere = root / "elsewhere"
        self.elsewhere.mkdir()
        # The source tree must not leak in through the environment either.
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("FACEREC_")}

    def run(self, program: str, *args: str) -> str:
        return run([str(self.bin / program), *args], self.elsewhere, self.env).stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    return Installed(tmp_path_factory.mktemp("wheel"))


def test_the_installed_wheel_is_what_runs(installed: Installed) -> None:
    where = installed.run("python", "-c", "import facerec; print(facerec.__file__)")
    assert Path(where.strip()).is_relative_to(installed.root / "venv"), where


def test_the_cli_prints_a_policy_from_the_installed_wheel(installed: Installed) -> None:
    assert "aws" in installed.run("facerec", "--help")
    document = json.loads(installed.run("facerec", "aws", "policy", "web", "--account", ACCOUNT, "--prefix", "whl"))
    sids = {statement["Sid"] for statement in document["Statement"]}
    assert {"StoreInputs", "ManageGallery", "SendRequests", "FindQueues", "SeeTheFleet"} <= sids, sids
    statements = json.dumps(document["Statement"])
    assert "arn:aws:s3:::whl-in-bucket/*" in statements and f":{ACCOUNT}:whl-req-queue" in statements
    assert "${" not in statements


def test_the_worker_user_data_carries_the_installed_unit(installed: Installed) -> None:
    """Provision renders the worker unit into the user data from the installed package's files (no deploy/
    folder is copied onto the image)."""
    script = (
        "from facerec.provision import render_user_data; from facerec.settings import Settings; "
        "print(render_user_data(Settings(prefix='whl')))"
    )
    user_data = installed.run("python", "-c", script)
    assert "ExecStart=/opt/facerec/venv/bin/facerec worker" in user_data
    assert 'FACEREC_PREFIX="whl"' in user_data and "${environment}" not in user_data


def test_the_installed_web_tier_serves_its_page_and_offline_docs(installed: Installed) -> None:
    """Package data the web tier reads at run time: its own page assets and the docs' Swagger UI and ReDoc."""
    script = (
        "from fastapi.testclient import TestClient\n"
        "from facerec.settings import Settings\n"
        "from facerec.web.app import create_app\n"
        # No lifespan: these routes need no data tier. A loopback Host: others are refused (DNS rebinding guard).
        "client = TestClient(create_app(Settings()), base_url='http://localhost')\n"
        "for path in ('/static/app.js', '/static/style.css', '/docs', '/redoc',\n"
        "             '/docs-assets/swagger-ui-bundle.js', '/docs-assets/redoc.standalone.js'):\n"
        "    reply = client.get(path, headers={'Accept': 'text/html'})\n"
        "    print(path, reply.status_code, len(reply.content))\n"
    )
    lines = installed.run("python", "-c", script).splitlines()
    served = {path: (int(status), int(size)) for path, status, size in (line.split() for line in lines)}
    assert len(served) == 6
    assert all(status == 200 and size > 0 for status, size in served.values()), served
