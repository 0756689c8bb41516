"""The batched recognizer around an untrained (seeded) network: ordering, bad inputs, batching, galleries."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from facerec.recognition.detection import pick_subject
from facerec.recognition.gallery import Gallery, GalleryMeta, GalleryMismatch
from facerec.recognition.results import NO_FACE, UNKNOWN, FaceResult, ImageRejected
from facerec.settings import Settings
from facerec.testing import jpeg_bytes, png_header_only
from tests.model_memo import memoise_model_work
from tests.standin_model import standin_recognizer

# The real model on a busy 2-core machine (CI, or a benchmark beside it) needs more than the default 60 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_pick_subject_prefers_the_large_central_face() -> None:
    boxes = np.array(
        [
            [0, 0, 40, 40],  # large but in the corner
            [80, 80, 115, 115],  # a bit smaller, centred
            [90, 10, 100, 20],  # small
        ],
        dtype=float,
    )
    assert pick_subject(boxes, 200, 200) == 1
    # In a small photo the corner face is near enough the centre for its size to win.
    assert pick_subject(boxes[[0, 2]], 80, 80) == 0


@pytest.fixture(scope="module")
def images(cse546_images: dict[str, bytes]) -> list[bytes]:
    return list(dict.fromkeys(cse546_images.values()))  # the 10 unique photos, in a fixed order


@pytest.fixture
def memo(monkeypatch: pytest.MonkeyPatch) -> None:
    """For tests about what happens around detection and embedding (ordering, galleries, thresholds, input
    types): each distinct photo is detected and embedded once per session (tests/model_memo.py). Not for the
    tests about batching, warm-up or stage times, which are about the model's own work."""
    memoise_model_work(monkeypatch)


@pytest.fixture(scope="module")
def enrolled(images: list[bytes]):  # type: ignore[no-untyped-def]
    """A recognizer whose gallery holds each test photo as its own person (embedded through the memo, so that the
    `memo` tests find every photo there; the one-at-a-time comparison still computes its own)."""
    recognizer = standin_recognizer()
    with pytest.MonkeyPatch.context() as patch:
        memoise_model_work(patch)
        vectors = recognizer.embed(images)
    assert all(isinstance(v, np.ndarray) for v in vectors)
    people = {f"person{i}": [v] for i, v in enumerate(vectors)}
    recognizer.gallery = Gallery.from_people(people, recognizer.gallery_meta())  # type: ignore[arg-type]
    return recognizer


@pytest.mark.usefixtures("memo")
def test_bad_inputs_get_typed_outcomes_in_order(enrolled, images: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    batch = [
        b"",
        images[0],
        b"not an image",
        jpeg_bytes()[:150],
        png_header_only(30_000, 30_000),
        jpeg_bytes(size=(1, 1)),
        jpeg_bytes(),  # a valid photo of nothing
        images[1],
    ]
    outcomes = enrolled.recognize(batch)
    assert len(outcomes) == len(batch)
    codes = [o.code if isinstance(o, ImageRejected) else o.name for o in outcomes]
    assert codes == [
        "not_an_image",
        "person0",
        "not_an_image",
        "not_an_image",
        "image_too_large",
        "not_an_image",
        NO_FACE,
        "person1",
    ]
    no_face = outcomes[6]
    assert isinstance(no_face, FaceResult) and no_face.no_face and no_face.box is None


def test_batched_equals_one_at_a_time(enrolled, images: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    images = images[:4]  # one at a time is slow on a shared 2-core machine; 4 cover the comparison
    batched = enrolled.recognize(images)
    single = [enrolled.recognize([image])[0] for image in images]
    assert [o.name for o in batched] == [o.name for o in single] == [f"person{i}" for i in range(len(images))]
    for together, alone in zip(batched, single, strict=True):
        assert abs(together.distance - alone.distance) < 1e-4
        assert together.box == pytest.approx(alone.box, abs=1e-3)
    # Distances to a gallery built from batched embeddings are ~0 both ways only if the embeddings agree.
    assert max(alone.distance for alone in single) < 1e-4


@pytest.mark.usefixtures("memo")
def test_embeddings_are_unit_length(enrolled, images: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    vectors = np.stack(enrolled.embed(images[:3]))
    assert vectors.shape == (3, 512) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.usefixtures("memo")
def test_empty_gallery_answers_unknown(images: list[bytes]) -> None:
    outcome = standin_recognizer().recognize(images[:1])[0]
    assert isinstance(outcome, FaceResult) and outcome.name == UNKNOWN and outcome.unknown


@pytest.mark.usefixtures("memo")
def test_threshold_turns_far_matches_into_unknown(enrolled, images: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    others = Gallery(enrolled.gallery.names[1:], enrolled.gallery.embeddings[1:], enrolled.gallery.meta)
    loose = standin_recognizer(Settings(unknown_threshold=10.0), others).recognize([images[0]])[0]
    assert loose.name != UNKNOWN
    strict = standin_recognizer(Settings(unknown_threshold=loose.distance * 0.99), others)
    outcome = strict.recognize([images[0]])[0]
    assert outcome.name == UNKNOWN and outcome.unknown
    assert outcome.distance == pytest.approx(loose.distance, abs=1e-4)


def test_gallery_from_other_settings_is_refused() -> None:
    other = Gallery.empty(GalleryMeta(weights="another-model", crop_size=160, margin=14))
    with pytest.raises(GalleryMismatch, match="weights"):
        standin_recognizer(gallery=other)


@pytest.mark.usefixtures("memo")
def test_large_photo_is_detected_on_a_copy_and_boxed_in_original_pixels(
    enrolled,  # type: ignore[no-untyped-def]
    images: list[bytes],
) -> None:
    small = Image.open(io.BytesIO(images[0])).convert("RGB")
    big = small.resize((small.width * 20, small.height * 20), Image.Resampling.BICUBIC)
    small_result, big_result = enrolled.recognize([small, big])
    assert big_result.name == small_result.name == "person0"
    assert np.array(big_result.box) == pytest.approx(np.array(small_result.box) * 20, abs=40)


@pytest.mark.usefixtures("memo")
def test_pil_images_are_accepted(enrolled, images: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    outcome = enrolled.recognize([Image.open(io.BytesIO(images[2]))])[0]
    assert outcome.name == "person2"


def test_warm_up_runs_the_embedding_model_and_the_detector(
    enrolled, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    batches: list[int] = []
    hook = enrolled.model.register_forward_hook(lambda module, args, output: batches.append(len(args[0])))
    detected: list[int] = []
    detect = enrolled.detector.detect
    monkeypatch.setattr(enrolled.detector, "detect", lambda images: detected.append(len(images)) or detect(images))
    try:
        with caplog.at_level("INFO", logger="facerec.recognition.recognizer"):
            enrolled.warm_up()
    finally:
        hook.remove()
    assert batches == [1] and detected == [1]
    [record] = [r for r in caplog.records if r.getMessage() == "recognizer_warm"]
    assert record.seconds >= 0


@pytest.mark.usefixtures("memo")
def test_a_gallery_replaced_during_a_batch_never_mislabels_it(enrolled, images: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    """Enrollment replaces the gallery from another thread while a batch runs: names must come from the gallery
    the distances were computed in. "Aaron" sorts first, so in the new gallery every old index names someone
    else."""
    before = enrolled.gallery
    newer = Gallery(["Aaron", *before.names], np.concatenate([before.embeddings[:1], before.embeddings]), before.meta)

    class SwappedDuringSearch(Gallery):
        def nearest(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            enrolled.gallery = newer  # as GallerySync would, mid-batch
            return super().nearest(queries)

    enrolled.gallery = SwappedDuringSearch(before.names, before.embeddings, before.meta)
    try:
        outcomes = enrolled.recognize(images)
    finally:
        enrolled.gallery = before
    assert [o.name for o in outcomes] == [f"person{i}" for i in range(len(images))]


def test_recognize_reports_its_stage_times_and_detection_splits_into_the_cascade(  # type: ignore[no-untyped-def]
    enrolled, images: list[bytes]
) -> None:
    from facerec.recognition.images import decode_image
    from facerec.recognition.recognizer import STAGES

    outcomes = enrolled.recognize(images[:1])
    assert all(isinstance(outcome, FaceResult) and not outcome.no_face for outcome in outcomes)
    assert set(enrolled.last_stages) == set(STAGES)
    assert all(seconds > 0 for seconds in enrolled.last_stages.values())
    settings = enrolled.settings
    seconds: dict[str, float] = {}
    decoded = [decode_image(data, settings.max_image_pixels, settings.decode_max_side) for data in images[:1]]
    faces = enrolled.detector.detect(decoded, None, seconds)
    assert all(face is not None for face in faces)
    assert set(seconds) == {"pnet", "rnet", "onet", "crop"}
    assert all(value > 0 for value in seconds.values())
