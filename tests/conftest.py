"""Shared fixtures: the shared datasets in ../shared/datasets (never copied into the repository) and moto."""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from facerec.testing import MOTO_CREDENTIALS, moto_server
from tests.aws import boto3_client
from tests.paths import DATASETS

pytest_plugins = ["pytester", "tests.strict_skips"]


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"test data not found at {path} (set FACEREC_DATASETS to the shared datasets folder)")
    return path


@pytest.fixture(scope="session")
def cse546_dir() -> Path:
    return _require(DATASETS / "cse546")


@pytest.fixture(scope="session")
def cse546_images(cse546_dir: Path) -> dict[str, bytes]:
    """The 10 unique course test images: filename -> JPEG bytes (from face_images_100.zip)."""
    images: dict[str, bytes] = {}
    with zipfile.ZipFile(cse546_dir / "face_images_100.zip") as archive:
        for info in archive.infolist():
            name = Path(info.filename).name
            if info.is_dir() or not name.lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            images.setdefault(name, archive.read(info))
    return images


@pytest.fixture(scope="session")
def cse546_labels(cse546_dir: Path) -> dict[str, str]:
    """Image stem -> name, from labels_100.csv."""
    with open(cse546_dir / "labels_100.csv", newline="") as handle:
        return {row["Image"]: row["Results"] for row in csv.DictReader(handle)}


@pytest.fixture(scope="session")
def lfw_dir() -> Path:
    return _require(DATASETS / "lfw_small")


@pytest.fixture(scope="session")
def lfw_people(lfw_dir: Path) -> dict[str, list[Path]]:
    """Identity -> its photos, sorted (the first 3 enroll, the rest are probes)."""
    return {
        person.name: sorted(p for p in person.iterdir() if p.is_file())
        for person in sorted(lfw_dir.iterdir())
        if person.is_dir()
    }


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One moto server for the whole session, with dummy credentials (never real ones) in the environment.

    Tests that share it name their resources uniquely; tests that need an empty account use `endpoint`."""
    with pytest.MonkeyPatch.context() as patch:
        for variable, value in MOTO_CREDENTIALS.items():
            patch.setenv(variable, value)
        # A developer's ~/.aws profile must not leak into the tests.
        patch.delenv("AWS_PROFILE", raising=False)
        with moto_server() as endpoint:
            yield endpoint


@pytest.fixture
def endpoint(moto_endpoint: str) -> str:
    """The moto server, reset: moto keeps its state per process, so each test starts from an empty account."""
    import httpx

    httpx.post(f"{moto_endpoint}/moto-api/reset").raise_for_status()
    return moto_endpoint


@pytest.fixture
def ec2(endpoint: str) -> Any:
    return boto3_client("ec2", endpoint)


@pytest.fixture(scope="session")
def aws_rehearsal(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The README's AWS deployment followed once on moto (tests/aws_rehearsal.py); shared by the rehearsal and
    IAM tests, which check what it answered, left behind and called."""
    from tests.aws_rehearsal import rehearse

    return rehearse(moto_endpoint, tmp_path_factory.mktemp("rehearsal"))
