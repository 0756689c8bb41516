"""Candidates, every face and verification in the recognizer: the pipeline around the untrained stand-in network
(arithmetic and plumbing), then the real weights on the course's photos (the answers themselves)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facerec.recognition import thresholds
from facerec.recognition.detection import MAX_FACES_PER_IMAGE
from facerec.recognition.gallery import Gallery
from facerec.recognition.results import UNKNOWN, FaceResult, ImageRejected, Verification, VerifyInput, Wanted
from facerec.settings import Settings
from facerec.testing import jpeg_bytes
from tests.model_memo import memoise_model_work
from tests.standin_model import STANDIN_ID, real_recognizer, standin_recognizer

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def each_photo_computed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests send the same photo many times (verify pairs it with every other, and it is enrolled too):
    detection and embedding are pure, so each distinct photo is detected and embedded once (tests/model_memo.py)
    and every request still runs the whole pipeline around them. Batched against one-at-a-time is
    tests/test_recognizer.py's question, asked there without the memo."""
    memoise_model_work(monkeypatch)


def side_by_side(*photos: bytes) -> bytes:
    """The photos pasted left to right on one canvas: a photo with as many faces."""
    images = [Image.open(io.BytesIO(photo)).convert("RGB") for photo in photos]
    canvas = Image.new("RGB", (sum(i.width for i in images), max(i.height for i in images)), (128, 128, 128))
    left = 0
    for image in images:
        canvas.paste(image, (left, 0))
        left += image.width
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def by_label(images: dict[str, bytes], labels: dict[str, str]) -> dict[str, list[bytes]]:
    """Label -> the distinct photos of that person, in file order."""
    people: dict[str, list[bytes]] = {}
    for name in sorted(images):
        photos = people.setdefault(labels[Path(name).stem], [])
        if images[name] not in photos:
            photos.append(images[name])
    return people


@pytest.fixture(scope="module")
def people(cse546_images: dict[str, bytes], cse546_labels: dict[str, str]) -> dict[str, list[bytes]]:
    return by_label(cse546_images, cse546_labels)


# ---- the stand-in network: plumbing ---------------------------------------------------------------------------


def test_candidates_are_one_per_person_nearest_first_and_start_with_the_answer(people: dict[str, list[bytes]]) -> None:
    recognizer = standin_recognizer()
    names = sorted(people)[:4]
    vectors = recognizer.embed([people[name][0] for name in names])
    # A name twice (a start-up gallery entry plus the same person enrolled): listed once, at its nearer entry.
    gallery_names = [*names, names[0]]
    embeddings = np.stack([*vectors, vectors[1]])  # type: ignore[list-item]
    recognizer.gallery = Gallery(gallery_names, embeddings, recognizer.gallery_meta())

    (outcome,) = recognizer.recognize([people[names[1]][0]], [Wanted(top_k=10)])
    assert isinstance(outcome, FaceResult) and outcome.name == names[1]
    candidates = [(c.name, c.distance) for c in outcome.candidates]
    assert candidates[0][0] == names[1]
    assert {name for name, _ in candidates} == set(names) and len(candidates) == len(names)
    assert candidates[0] == (outcome.name, pytest.approx(outcome.distance, abs=1e-6))
    assert [d for _, d in candidates] == sorted(d for _, d in candidates)
    (default,) = recognizer.recognize([people[names[1]][0]])
    assert isinstance(default, FaceResult) and len(default.candidates) == 1 and default.faces == ()


def test_every_face_is_reported_largest_first_with_the_subject_among_them(people: dict[str, list[bytes]]) -> None:
    recognizer = standin_recognizer()
    small = Image.open(io.BytesIO(people["Paul"][0])).convert("RGB")
    smaller = small.resize((small.width // 2, small.height // 2))
    buffer = io.BytesIO()
    smaller.save(buffer, format="JPEG", quality=95)
    photo = side_by_side(people["Bob"][0], buffer.getvalue())

    subject_only, every = recognizer.recognize([photo, photo], [Wanted(), Wanted(top_k=2, all_faces=True)])
    assert isinstance(subject_only, FaceResult) and subject_only.faces == ()
    assert isinstance(every, FaceResult) and len(every.faces) == 2
    areas = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in every.faces if f.box is not None]
    assert areas == sorted(areas, reverse=True)
    assert every.box in [face.box for face in every.faces]
    assert every.box == subject_only.box  # the subject is the same face either way
    assert all(face.unknown for face in every.faces)  # an empty gallery knows nobody
    assert MAX_FACES_PER_IMAGE == 10


def test_verify_compares_subject_faces_and_enrolled_people(
    people: dict[str, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(thresholds.CALIBRATED, STANDIN_ID, thresholds.Thresholds(recognition=0.9, verification=1e-3))
    recognizer = standin_recognizer(Settings(unknown_threshold=None))
    paul, bob = people["Paul"][0], people["Bob"][0]
    (vector,) = recognizer.embed([paul])
    recognizer.gallery = Gallery(["Paul"], np.stack([vector]), recognizer.gallery_meta())  # type: ignore[list-item]

    itself, other, person, stranger, blank, junk = recognizer.verify(
        [
            VerifyInput(paul, paul),
            VerifyInput(paul, bob),
            VerifyInput(paul, person="Paul"),
            VerifyInput(paul, person="Nobody"),
            VerifyInput(paul, jpeg_bytes(size=(96, 96))),
            VerifyInput(b"not an image", paul),
        ]
    )
    assert isinstance(itself, Verification) and itself.same and itself.distance < 1e-4 and itself.threshold == 1e-3
    assert [face.image for face in itself.faces] == ["image1", "image2"]
    assert isinstance(other, Verification) and not other.same and other.distance > 1e-3
    # No recognition threshold configured: a person is judged with the verification one.
    assert isinstance(person, Verification) and person.same and person.threshold == 1e-3
    assert [face.image for face in person.faces] == ["image1"]
    assert isinstance(stranger, ImageRejected) and stranger.code == "unknown_person"
    assert isinstance(blank, ImageRejected) and (blank.code, blank.message) == ("no_face", "no face found in image2")
    assert isinstance(junk, ImageRejected) and junk.code == "not_an_image" and junk.message.startswith("image1")

    with_recognition = standin_recognizer(Settings(unknown_threshold=0.5), recognizer.gallery)
    (judged,) = with_recognition.verify([VerifyInput(paul, person="Paul")])
    assert isinstance(judged, Verification) and judged.threshold == 0.5


# ---- the real weights: the answers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real():  # type: ignore[no-untyped-def]
    return real_recognizer()


def test_real_model_verifies_course_photos_and_finds_two_faces(  # type: ignore[no-untyped-def]
    real, cse546_images: dict[str, bytes], cse546_labels: dict[str, str], lfw_people: dict[str, list[Path]]
) -> None:
    files = sorted(cse546_images)
    name = cse546_labels[Path(files[0]).stem]
    first = cse546_images[files[0]]
    others = {cse546_labels[Path(f).stem]: cse546_images[f] for f in reversed(files)}
    others.pop(name)
    (vector,) = real.embed([first])
    real.gallery = Gallery([name], np.stack([vector]), real.gallery_meta())

    itself, enrolled, *different = real.verify(
        [VerifyInput(first, first), VerifyInput(first, person=name), *(VerifyInput(first, o) for o in others.values())]
    )
    assert isinstance(itself, Verification) and itself.same and itself.distance < 1e-3
    assert isinstance(enrolled, Verification) and enrolled.same, enrolled
    for other, outcome in zip(others, different, strict=True):
        assert isinstance(outcome, Verification) and not outcome.same, (name, other, outcome.distance)

    # Two different photos of one person: the course's 64-pixel faces are too small for that (their same-person
    # distances, ~1.25-1.3, overlap their different-person ones), so an LFW portrait pair stands in.
    person, photos = next((p, photos) for p, photos in sorted(lfw_people.items()) if len(photos) >= 2)
    (pair,) = real.verify([VerifyInput(photos[0].read_bytes(), photos[1].read_bytes())])
    assert isinstance(pair, Verification) and pair.same, (person, pair.distance, pair.threshold)

    stranger = others[sorted(others)[0]]
    (two,) = real.recognize([side_by_side(first, stranger)], [Wanted(top_k=1, all_faces=True)])
    assert isinstance(two, FaceResult) and len(two.faces) == 2
    # The enrolled person is named; the stranger, far beyond the open-set threshold, is Unknown, with the only
    # enrolled person still reported as the nearest.
    assert sorted(face.name for face in two.faces) == sorted([name, UNKNOWN])
    assert all(face.nearest == name for face in two.faces)
    assert min(face.candidates[0].distance for face in two.faces) < 0.5  # the enrolled photo itself
