"""One gallery for every backend: `facerec serve --gallery FILE --backend aws` uploads the file to the gallery
bucket, a worker with no gallery setting loads it from there, and `--gallery blob:KEY` names any key of the
gallery store (local directory or bucket)."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from click.testing import CliRunner

from facerec.cli import main
from facerec.gallery_store import STORE_GALLERY_KEY, GalleryNotInStore, fetch_gallery, upload_gallery
from facerec.recognition.gallery import Gallery, GalleryMeta
from facerec.settings import Settings
from facerec.testing import MOTO_REGION
from tests.aws import boto3_client, create_aws_resources, moto_settings
from tests.e2e.processes import free_port


def facerec_environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key.startswith("FACEREC_")}


BEFORE = facerec_environment()


def gallery_file(path: Path, names: list[str]) -> Path:
    embeddings = np.eye(len(names), 512, dtype=np.float32)
    Gallery(names, embeddings, GalleryMeta(weights="w", crop_size=160, margin=14, unknown_threshold=1.0)).save(path)
    return path


def started_and_closed(server: uvicorn.Server, sockets: list[Any] | None = None) -> None:
    """In place of serving: the command's set-up is what these tests look at."""
    server.started = True
    for sock in sockets or []:
        sock.close()


def isolate_serve_environment(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """`facerec serve` exports its options for its worker subprocesses (FACEREC_*): in this process they must
    not outlive the test. Setting them through monkeypatch first has them restored (to unset) afterwards."""
    for name in ("GALLERY", "BACKEND", "PREFIX", "PORT", "DATA_DIR"):
        monkeypatch.setenv(f"FACEREC_{name}", "")
        monkeypatch.delenv(f"FACEREC_{name}")
    monkeypatch.setenv("FACEREC_AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("FACEREC_AWS_REGION", MOTO_REGION)


def fresh_deployment(endpoint: str) -> Settings:
    settings = moto_settings(endpoint, prefix=f"gal-{uuid.uuid4().hex[:8]}")
    create_aws_resources(settings)
    return settings


def test_serve_on_aws_uploads_the_gallery_for_the_workers(
    moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = fresh_deployment(moto_endpoint)
    path = gallery_file(tmp_path / "g.pt", ["Ada", "Bob"])
    monkeypatch.setattr(uvicorn.Server, "run", started_and_closed)
    isolate_serve_environment(monkeypatch, moto_endpoint)
    argv = ["serve", "--gallery", str(path), "--backend", "aws", "--prefix", settings.prefix, f"--port={free_port()}"]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output
    assert f"gallery uploaded for the EC2 workers: s3://{settings.gallery_bucket}/{STORE_GALLERY_KEY}" in result.output
    stored = boto3_client("s3", moto_endpoint).get_object(Bucket=settings.gallery_bucket, Key=STORE_GALLERY_KEY)
    assert stored["Body"].read() == path.read_bytes()

    # A worker set up as an instance is (no gallery setting) finds it there.
    found = fetch_gallery(settings)
    assert found == (f"blob:{STORE_GALLERY_KEY}", path.read_bytes())


def test_serve_leaves_no_setting_behind_in_this_process() -> None:
    """Runs after the serve tests above (same module, file order): what they exported was restored."""
    assert facerec_environment() == BEFORE


def test_serve_refuses_in_one_sentence_when_the_bucket_is_missing(
    moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = gallery_file(tmp_path / "g.pt", ["Ada"])
    isolate_serve_environment(monkeypatch, moto_endpoint)
    argv = ["serve", "--gallery", str(path), "--backend", "aws", "--prefix", "never-made", f"--port={free_port()}"]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 1
    assert "cannot upload the gallery to the bucket never-made-gallery-bucket" in result.output
    assert "facerec aws provision --prefix never-made" in result.output and "Traceback" not in result.output


def test_without_a_gallery_anywhere_a_worker_has_none(moto_endpoint: str) -> None:
    assert fetch_gallery(fresh_deployment(moto_endpoint)) is None


def test_blob_key_on_the_local_backend(tmp_path: Path) -> None:
    settings = Settings(backend="local", data_dir=tmp_path / "data", gallery="blob:galleries/course.pt")
    with pytest.raises(GalleryNotInStore, match=r"blob:galleries/course\.pt is not in the gallery store"):
        fetch_gallery(settings)
    asyncio.run(upload_gallery(settings, b"gallery bytes", key="galleries/course.pt"))
    assert fetch_gallery(settings) == ("blob:galleries/course.pt", b"gallery bytes")
    # A file path is the worker's own business: nothing is fetched.
    assert fetch_gallery(settings.model_copy(update={"gallery": str(tmp_path / "g.pt")})) is None


def test_a_worker_builds_its_recognizer_with_the_stored_gallery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`facerec worker --gallery blob:KEY` (the form its --help shows) as load_recognizer runs it, with the model
    itself replaced: the gallery handed to the recognizer is the stored file's."""
    from facerec.recognition import recognizer
    from facerec.worker.service import load_recognizer

    settings = Settings(backend="local", data_dir=tmp_path / "data", gallery="blob:g.pt")
    asyncio.run(upload_gallery(settings, gallery_file(tmp_path / "g.pt", ["Ada", "Bob"]).read_bytes(), key="g.pt"))
    built: dict[str, Any] = {}

    class NoModel:
        def __init__(self, settings: Settings, gallery: Gallery | None) -> None:
            built["gallery"] = gallery

        def warm_up(self) -> None:
            pass

    monkeypatch.setattr(recognizer, "Recognizer", NoModel)
    load_recognizer(settings)
    assert list(built["gallery"].names) == ["Ada", "Bob"]
