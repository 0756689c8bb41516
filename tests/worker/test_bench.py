"""The worker benchmark's helpers (the benchmark itself is a script: `facerec bench worker`)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from facerec.bench.worker import _stage_medians, load_images, raw_throughput
from tests.worker.fakes import FakeRecognizer, photo_of


def test_load_images_from_zip_and_folder(tmp_path: Path) -> None:
    archive = tmp_path / "faces.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("faces/b.jpg", photo_of("Bo"))
        handle.writestr("faces/a.png", photo_of("Ana"))
        handle.writestr("faces/readme.txt", "not an image")
    assert [name for name, _ in load_images(archive)] == ["a.png", "b.jpg"]
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "x.jpeg").write_bytes(photo_of("Paul"))
    (folder / "notes.md").write_text("no")
    assert load_images(folder) == [("x.jpeg", photo_of("Paul"))]


def test_stage_medians_read_batch_logs(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    lines = [
        {"event": "worker_started"},
        {"event": "batch_done", "size": 8, "infer_s": 0.2, "store_s": 0.01, "started_at": 5.0},
        {"event": "batch_done", "size": 4, "infer_s": 0.4, "store_s": 0.03, "started_at": 5.0},
    ]
    log.write_text("\n".join(json.dumps(line) for line in lines) + "\nnot json\n")
    assert _stage_medians(log) == {
        "median_infer_s": 0.3,
        "median_store_s": 0.02,
        "batches": 2,
        "median_batch_size": 6.0,
        "inference_total_s": 0.6,
    }


def test_raw_throughput_calls_recognize_in_batches() -> None:
    recognizer = FakeRecognizer()
    rates = raw_throughput(recognizer, [photo_of("Bo")] * 10, batch_max=4, rounds=2)
    assert len(rates) == 2 and all(rate > 0 for rate in rates)
    assert recognizer.batches == [4, 4, 2, 4, 4, 2]
