"""Trustworthy answers with the real casia-webface weights and the shipped thresholds, measured on the HELD-OUT
half of lfw_small (identities at odd sorted index; the thresholds were calibrated on the even ones)."""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from facerec.cli import main
from facerec.recognition.calibration import verification_pairs
from facerec.recognition.gallery import Gallery
from facerec.recognition.images import decode_image
from facerec.recognition.thresholds import CALIBRATED
from facerec.testing import jpeg_bytes
from tests.model_memo import memoise_model_work
from tests.standin_model import real_recognizer

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def shipped_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FACEREC_UNKNOWN_THRESHOLD", "FACEREC_FLIP_TTA", "FACEREC_WEIGHTS"):
        monkeypatch.delenv(name, raising=False)
    # These tests and the CLI's lfw_small test embed the same photos: each photo is detected and embedded once.
    memoise_model_work(monkeypatch)


@pytest.fixture(scope="module")
def held_out(lfw_people: dict[str, list[Path]]) -> dict[str, list[Path]]:
    return {name: lfw_people[name] for name in sorted(lfw_people)[1::2]}


@pytest.mark.timeout(240)
def test_open_set_on_held_out_people(held_out: dict[str, list[Path]]) -> None:
    recognizer = real_recognizer()
    assert recognizer.unknown_threshold == CALIBRATED["casia-webface"].recognition, "open set by default"
    threshold = recognizer.unknown_threshold
    photos = [(name, path) for name, paths in held_out.items() for path in paths]
    # Each photo detected and embedded once (what `Recognizer.embed` does), keeping the number of faces found.
    limit = recognizer.settings.max_image_pixels
    faces = recognizer.detector.detect([decode_image(path.read_bytes(), limit) for _, path in photos])
    found = [(name, face) for (name, _), face in zip(photos, faces, strict=True) if face is not None]
    vectors = recognizer.embed_crops(torch.stack([face.crop for _, face in found]))
    people: dict[str, list[np.ndarray]] = {}
    single: dict[str, list[bool]] = {}
    for (name, face), vector in zip(found, vectors, strict=True):
        people.setdefault(name, []).append(vector)
        single.setdefault(name, []).append(face.faces == 1)
    named, probes, unknown, strangers = 0, 0, 0, 0
    names = sorted(people)
    for fold in (0, 1):  # half the people enrolled, the other half strangers; then swapped
        # As `facerec enroll --per-person 3`: the first 3 photos, less those showing several faces.
        enrolled = {
            name: [v for v, one in zip(people[name][:3], single[name][:3], strict=True) if one]
            for index, name in enumerate(names)
            if index % 2 == fold
        }
        gallery = Gallery.from_people(enrolled, recognizer.gallery_meta())
        for name in names:
            queries = people[name][3:] if name in enrolled else people[name]
            nearest, distances = gallery.nearest(np.stack(queries))
            if name in enrolled:
                right = np.array([gallery.names[i] == name for i in nearest])
                named += int((right & (distances <= threshold)).sum())
                probes += len(queries)
            else:
                unknown += int((distances > threshold).sum())
                strangers += len(queries)
    assert probes >= 50 and strangers >= 100
    assert named / probes >= 0.95, f"{named}/{probes} enrolled people's new photos named"
    assert unknown / strangers >= 0.95, f"{unknown}/{strangers} strangers answered Unknown"


@pytest.mark.timeout(180)
def test_verify_pairs_on_held_out_people(held_out: dict[str, list[Path]], tmp_path: Path) -> None:
    subset = {name: held_out[name] for name in sorted(held_out)[:8]}
    genuine, impostor = verification_pairs({name: len(paths) for name, paths in subset.items()})
    blank = tmp_path / "blank.jpg"
    blank.write_bytes(jpeg_bytes(size=(120, 120)))
    table = tmp_path / "pairs.csv"
    with table.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["img1", "img2", "note"])  # an extra column is ignored
        for (a, i), (b, j) in [*genuine, *impostor]:  # paths relative to the CSV's folder
            out.writerow([os.path.relpath(subset[a][i], tmp_path), os.path.relpath(subset[b][j], tmp_path), "x"])
        out.writerow(["blank.jpg", os.path.relpath(subset[sorted(subset)[0]][0], tmp_path), "no face"])

    result = CliRunner().invoke(main, ["verify", "--pairs", str(table)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["img1", "img2", "same", "distance"]
    assert len(rows) == len(genuine) + len(impostor) + 1
    assert rows[-1]["img1"] == "blank.jpg" and rows[-1]["same"] == "" and rows[-1]["distance"] == ""
    expected = ["1"] * len(genuine) + ["0"] * len(impostor)
    correct = sum(row["same"] == want for row, want in zip(rows, expected, strict=False))
    assert correct / len(expected) >= 0.975, f"{correct}/{len(expected)} pairs right"
    assert all(re.fullmatch(r"\d\.\d{4}", row["distance"]) for row in rows[:-1])
    assert "blank.jpg" in result.stderr  # the photo without a face is named on stderr


@pytest.mark.timeout(120)
def test_verify_two_photos(held_out: dict[str, list[Path]], tmp_path: Path) -> None:
    first, second = (held_out[name][0] for name in sorted(held_out)[:2])
    runner = CliRunner()
    same = runner.invoke(main, ["verify", str(first), str(first)])
    assert same.exit_code == 0 and same.stdout == "same 0.0000\n", same.output
    different = runner.invoke(main, ["verify", str(first), str(second)])
    assert different.exit_code == 0 and re.fullmatch(r"different \d\.\d{4}\n", different.stdout), different.output
    distance = float(different.stdout.split()[1])
    assert distance > CALIBRATED["casia-webface"].verification

    blank = tmp_path / "blank.jpg"
    blank.write_bytes(jpeg_bytes(size=(120, 120)))
    no_face = runner.invoke(main, ["verify", str(first), str(blank)])
    assert no_face.exit_code == 1 and no_face.stdout == ""
    assert f"error {blank}: no face found" in no_face.stderr
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image")
    broken = runner.invoke(main, ["verify", str(garbage), str(first)])
    assert broken.exit_code == 1 and "not_an_image" in broken.stderr
