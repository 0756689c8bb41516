"""`facerec enroll` and `facerec recognize` end to end on lfw_small photos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from facerec.cli import main
from facerec.cli.enroll import person_photos
from facerec.testing import jpeg_bytes, side_by_side
from tests.model_memo import memoise_model_work
from tests.standin_model import install_standin_weights

# The real model on a busy 2-core machine (CI, or a benchmark beside it) needs more than the default 60 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def memo(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same few photos are enrolled and recognized several times over: detected and embedded once per
    session (tests/model_memo.py); every command still runs its whole pipeline around them."""
    memoise_model_work(monkeypatch)


@pytest.fixture
def people_dir(tmp_path: Path, lfw_people: dict[str, list[Path]]) -> Path:
    """3 people x 1 photo (copied into tmp), plus a folder whose photos are unusable."""
    root = tmp_path / "people"
    for name in sorted(lfw_people)[:3]:
        (root / name).mkdir(parents=True)
        for photo in lfw_people[name][:1]:
            shutil.copy(photo, root / name / photo.name)
    broken = root / "Broken_Person"
    broken.mkdir()
    (broken / "garbage.jpg").write_bytes(b"these bytes are no image")
    (broken / "blank.jpg").write_bytes(jpeg_bytes(size=(120, 120)))
    return root


@pytest.mark.usefixtures("memo")
def test_enroll_then_recognize(people_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_standin_weights(monkeypatch)
    gallery = tmp_path / "gallery.pt"
    runner = CliRunner()

    enrolled = runner.invoke(main, ["enroll", str(people_dir), "--gallery", str(gallery)])
    assert enrolled.exit_code == 0, enrolled.output
    assert "garbage.jpg: not_an_image" in enrolled.stderr
    assert "blank.jpg: no face found" in enrolled.stderr
    assert "not enrolled Broken_Person" in enrolled.stderr
    assert "enrolled 3 people from 3 photos" in enrolled.stdout

    # With one photo per person the gallery entry is that photo: recognizing it must give its person.
    probes = [sorted(folder.iterdir())[0] for folder in sorted(people_dir.iterdir()) if folder.name != "Broken_Person"]
    probes.append(people_dir / "Broken_Person" / "blank.jpg")
    probes.append(people_dir / "Broken_Person" / "garbage.jpg")
    result = runner.invoke(main, ["recognize", "--gallery", str(gallery), *map(str, probes)])
    # The unreadable image fails the command, on stderr only: stdout holds the `<stem>:<name>` answers.
    assert result.exit_code == 1, result.output
    expected = [f"{p.stem}:{p.parent.name}" for p in probes[:3]] + ["blank:NoFace"]
    assert result.stdout.splitlines() == expected
    assert result.stderr.splitlines() == [f"error {probes[4]}: not_an_image: not a supported image format"]

    readable = runner.invoke(main, ["recognize", "--gallery", str(gallery), *map(str, probes[:4])])
    assert readable.exit_code == 0 and readable.stderr == ""

    as_json = runner.invoke(main, ["recognize", "--json", "--gallery", str(gallery), *map(str, probes[:2])])
    records = json.loads(as_json.stdout)
    assert [r["name"] for r in records] == [probes[0].parent.name, probes[1].parent.name]
    assert all(r["distance"] < 1e-3 and len(r["box"]) == 4 for r in records)

    with_error = runner.invoke(main, ["recognize", "--json", "--gallery", str(gallery), str(probes[4])])
    assert with_error.exit_code == 1 and "garbage.jpg: not_an_image" in with_error.stderr
    assert json.loads(with_error.stdout)[0]["error"]["code"] == "not_an_image"


@pytest.mark.usefixtures("memo")
def test_enroll_skips_a_photo_with_two_faces_like_the_api(
    tmp_path: Path, lfw_people: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    install_standin_weights(monkeypatch)
    (ann, ann_photos), (_, bill_photos) = list(lfw_people.items())[2:4]
    folder = tmp_path / "people" / ann
    folder.mkdir(parents=True)
    shutil.copy(ann_photos[0], folder / "ann.jpg")
    pair = folder / "with_bill.jpg"
    pair.write_bytes(side_by_side(ann_photos[1], bill_photos[1]))

    result = CliRunner().invoke(main, ["enroll", str(tmp_path / "people"), "--gallery", str(tmp_path / "g.pt")])
    assert result.exit_code == 0, result.output
    assert f"skipped {pair}: 2 faces" in result.stderr
    assert "enrolled 1 person from 1 photo into" in result.stdout and "(1 skipped)" in result.stdout


def test_per_person_limit_takes_the_first_sorted_photos(tmp_path: Path) -> None:
    for name in ("b", "a"):
        (tmp_path / name).mkdir()
        for index in (3, 1, 2):
            (tmp_path / name / f"{name}{index}.jpg").write_bytes(b"x")
    (tmp_path / ".hidden").mkdir()
    people = person_photos(tmp_path, per_person=2)
    assert list(people) == ["a", "b"]
    assert [p.name for p in people["b"]] == ["b1.jpg", "b2.jpg"]
    assert len(person_photos(tmp_path, per_person=None)["a"]) == 3


@pytest.mark.usefixtures("memo")
def test_recognize_refuses_a_gallery_from_other_settings(
    people_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_standin_weights(monkeypatch)
    gallery = tmp_path / "gallery.pt"
    runner = CliRunner()
    assert (
        runner.invoke(main, ["enroll", str(people_dir), "--gallery", str(gallery), "--per-person", "1"]).exit_code == 0
    )
    photo = next((people_dir / sorted(p.name for p in people_dir.iterdir())[0]).iterdir())
    result = runner.invoke(main, ["recognize", "--gallery", str(gallery), "--crop-size", "200", str(photo)])
    assert result.exit_code != 0
    assert "crop_size: gallery 160, model 200" in result.output


def test_enroll_without_person_folders_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_standin_weights(monkeypatch)
    result = CliRunner().invoke(main, ["enroll", str(tmp_path), "--gallery", str(tmp_path / "g.pt")])
    assert result.exit_code == 2 and "sub-folders" in result.output


@pytest.mark.timeout(240)  # 117 LFW photos through the real model: about 40 s here, more on a busy machine
def test_lfw_small_accuracy_with_the_real_weights(
    lfw_dir: Path, lfw_people: dict[str, list[Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Acceptance: enroll the first 3 photos of each person, recognize the other 3: the nearest entry is the right
    person for at least 95% (rank-1, closed set), and the open-set answers at the default threshold name at least
    93% correctly (the rest Unknown: no photo here is of a stranger, so this is the price of refusing strangers)."""
    # test_accuracy.py's tests embed the held-out half of these photos with the same weights: done once.
    memoise_model_work(monkeypatch)
    gallery = tmp_path / "lfw.pt"
    runner = CliRunner()
    enrolled = runner.invoke(main, ["enroll", str(lfw_dir), "--gallery", str(gallery), "--per-person", "3"])
    assert enrolled.exit_code == 0, enrolled.output
    probes = [photo for photos in lfw_people.values() for photo in photos[3:]]
    result = runner.invoke(main, ["recognize", "--json", "--gallery", str(gallery), *map(str, probes)])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    people = [probe.parent.name for probe in probes]
    nearest = sum(record["nearest"] == person for record, person in zip(records, people, strict=True))
    named = sum(record["name"] == person for record, person in zip(records, people, strict=True))
    wrong = [(r["name"], p) for r, p in zip(records, people, strict=True) if r["name"] not in (p, "Unknown")]
    print(f"lfw_small: rank-1 {nearest}/{len(probes)}, open set {named}/{len(probes)} named, wrong names {wrong}")
    assert nearest / len(probes) >= 0.95
    assert named / len(probes) >= 0.93
    # John_Allen_Muhammad's first 3 photos all show bystanders, so he is not enrolled: his photos are answered
    # Unknown rather than with a wrong name. Measured: one wrong name, Wen_Jiabao's photo as Hu_Jintao (0.81).
    assert len(wrong) <= 1, wrong


@pytest.mark.usefixtures("memo")
def test_enroll_into_the_gallery_store(people_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from facerec.backend import open_data_tier
    from facerec.people import enrolled_people
    from facerec.settings import Settings

    install_standin_weights(monkeypatch)
    data_dir = tmp_path / "data"
    result = CliRunner().invoke(main, ["enroll", str(people_dir), "--store", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert "enrolled 3 people from 3 photos into the gallery store" in result.stdout
    assert "garbage.jpg" in result.stderr and "blank.jpg: no face found" in result.stderr

    async def listed() -> dict[str, int]:
        async with open_data_tier(Settings(backend="local", data_dir=data_dir)) as data:
            assert data.gallery is not None
            return await enrolled_people(data.gallery)

    people = sorted(p.name for p in people_dir.iterdir() if p.name != "Broken_Person")
    assert asyncio.run(listed()) == dict.fromkeys(people, 1)
    refused = CliRunner().invoke(main, ["enroll", str(people_dir)])
    assert refused.exit_code != 0 and "either --gallery FILE or --store" in refused.output
