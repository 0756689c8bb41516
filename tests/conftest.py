"""Shared fixtures: the design brief's datasets in ../shared/datasets (never copied into the repo)."""

from __future__ import annotations

import csv
import io
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MOTO_REGION = "us-east-1"
DATASETS = Path(os.environ.get("FACEREC_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))


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


def jpeg_bytes(color: tuple[int, int, int] = (120, 80, 40), size: tuple[int, int] = (64, 64)) -> bytes:
    """A small valid JPEG with no face in it."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's server on a free local port: aioboto3 talks HTTP to it (`mock_aws` cannot patch aiobotocore)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def endpoint(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A reset moto server and dummy credentials (never real ones) for one test."""
    import httpx

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": MOTO_REGION,
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    httpx.post(f"{moto_endpoint}/moto-api/reset").raise_for_status()
    return moto_endpoint
