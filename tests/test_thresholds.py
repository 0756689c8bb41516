"""Open set by default: how FACEREC_UNKNOWN_THRESHOLD resolves, for the recognizer, `facerec recognize` and
`facerec serve` alike, and what an Unknown answer still tells."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from facerec.cli import main
from facerec.cli.serve import banner
from facerec.gallery_file import gallery_unknown_threshold
from facerec.recognition.gallery import Gallery, GalleryMeta
from facerec.recognition.results import UNKNOWN, FaceResult
from facerec.recognition.thresholds import (
    CALIBRATED,
    ThresholdUnavailable,
    recognition_threshold,
    verification_threshold,
)
from facerec.settings import Settings
from tests.model_memo import memoise_model_work
from tests.standin_model import STANDIN_ID, standin_model

CASIA = "casia-webface"


@pytest.fixture(autouse=True)
def no_threshold_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACEREC_UNKNOWN_THRESHOLD", raising=False)
    # The same photo is recognized under several thresholds: detected and embedded once (tests/model_memo.py).
    memoise_model_work(monkeypatch)


def test_unset_means_the_calibrated_default_for_the_weights() -> None:
    assert Settings().unknown_threshold is None
    assert recognition_threshold(Settings(), CASIA) == CALIBRATED[CASIA].recognition
    assert verification_threshold(Settings(), CASIA) == CALIBRATED[CASIA].verification
    # The gallery's recorded threshold comes before the calibrated one.
    assert recognition_threshold(Settings(), CASIA, recorded=0.7) == 0.7


@pytest.mark.parametrize(("value", "expected"), [("0.8", 0.8), ("1", 1.0), ("none", None), ("None", None)])
def test_a_number_or_none_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str, expected: float) -> None:
    monkeypatch.setenv("FACEREC_UNKNOWN_THRESHOLD", value)
    settings = Settings()
    # An explicit setting wins over the calibrated default and over what the gallery recorded.
    assert recognition_threshold(settings, CASIA) == expected
    assert recognition_threshold(settings, CASIA, recorded=0.5) == expected
    assert recognition_threshold(settings, "vggface2") == expected


@pytest.mark.parametrize("value", ["-1", "0", "closed", "unset"])
def test_anything_else_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("FACEREC_UNKNOWN_THRESHOLD", value)
    with pytest.raises(ValueError, match="unknown_threshold"):
        Settings()


@pytest.mark.parametrize("weights", ["vggface2", "file:0123456789abcdef", STANDIN_ID])
def test_uncalibrated_weights_without_a_threshold_fail_saying_how(weights: str) -> None:
    with pytest.raises(ThresholdUnavailable) as raised:
        recognition_threshold(Settings(), weights)
    message = str(raised.value)
    assert weights in message
    assert "FACEREC_UNKNOWN_THRESHOLD=DISTANCE" in message and "FACEREC_UNKNOWN_THRESHOLD=none" in message


def standin(settings: Settings, gallery: Gallery | None = None) -> object:
    from facerec.recognition.recognizer import Recognizer

    return Recognizer(settings, gallery, model=standin_model(), model_id=STANDIN_ID)


def test_the_recognizer_fails_at_start_for_a_gallery_of_uncalibrated_weights() -> None:
    gallery = Gallery(["Ada"], np.eye(1, 512, dtype=np.float32), GalleryMeta(STANDIN_ID, 160, 14))
    with pytest.raises(ThresholdUnavailable, match="FACEREC_UNKNOWN_THRESHOLD"):
        standin(Settings(), gallery)
    assert standin(Settings(unknown_threshold=0.9), gallery).unknown_threshold == 0.9  # type: ignore[attr-defined]
    assert standin(Settings(unknown_threshold="none"), gallery).unknown_threshold is None  # type: ignore[attr-defined]
    recorded = Gallery(gallery.names, gallery.embeddings, GalleryMeta(STANDIN_ID, 160, 14, unknown_threshold=0.6))
    assert standin(Settings(), recorded).unknown_threshold == 0.6  # type: ignore[attr-defined]


def test_an_unknown_answer_keeps_the_distance_and_the_nearest_name(lfw_people: dict[str, list[Path]]) -> None:
    from facerec.recognition.recognizer import Recognizer

    photos = [paths[0].read_bytes() for paths in list(lfw_people.values())[:2]]
    enroller = Recognizer(Settings(), model=standin_model(), model_id=STANDIN_ID, threshold_needed=False)
    vectors = enroller.embed(photos)
    gallery = Gallery(["Ada"], np.stack([vectors[0]]), enroller.gallery_meta())  # type: ignore[list-item]
    closed = standin(Settings(unknown_threshold="none"), gallery).recognize([photos[1]])[0]  # type: ignore[attr-defined]
    assert isinstance(closed, FaceResult) and closed.name == "Ada" and closed.nearest == "Ada"
    assert closed.distance is not None
    strict = Settings(unknown_threshold=closed.distance / 2)
    open_set = standin(strict, gallery).recognize([photos[1]])[0]  # type: ignore[attr-defined]
    assert open_set.name == UNKNOWN and open_set.unknown and open_set.nearest == "Ada"
    assert open_set.distance == pytest.approx(closed.distance, abs=1e-4)


def test_a_gallery_records_the_threshold_it_was_made_with(tmp_path: Path) -> None:
    from facerec.recognition.recognizer import Recognizer

    enroller = Recognizer(Settings(unknown_threshold=0.75), model=standin_model(), model_id=STANDIN_ID)
    path = tmp_path / "g.pt"
    Gallery(["Ada"], np.eye(1, 512, dtype=np.float32), enroller.gallery_meta()).save(path)
    assert gallery_unknown_threshold(path) == 0.75  # read without torch, as `facerec serve` does
    plain = tmp_path / "plain.pt"
    Gallery(["Ada"], np.eye(1, 512, dtype=np.float32), GalleryMeta(CASIA, 160, 14)).save(plain)
    assert gallery_unknown_threshold(plain) is None


def test_the_serve_banner_says_when_a_face_is_unknown(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    text = "\n".join(banner(settings, None))
    threshold = CALIBRATED[CASIA].recognition
    assert (
        f"unknown faces: answered Unknown beyond distance {threshold:g} "
        "(casia-webface default; FACEREC_UNKNOWN_THRESHOLD=none for closed-set)"
    ) in text
    assert "recorded in the gallery" in "\n".join(banner(settings, {"Ada": 1}, recorded=0.7))
    closed = "\n".join(banner(Settings(data_dir=tmp_path, unknown_threshold="none"), None))
    assert "closed set: every face is answered with the nearest name" in closed


def test_serve_refuses_to_start_without_a_threshold_for_its_weights(tmp_path: Path) -> None:
    weights = tmp_path / "mine.pt"
    weights.write_bytes(b"a state_dict file")
    argv = [sys.executable, "-m", "facerec", "serve", f"--weights={weights}", f"--data-dir={tmp_path / 'data'}"]
    argv.append("--port=1")  # never reached: the threshold is resolved before the socket is bound
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert "no calibrated Unknown threshold" in done.stderr and "FACEREC_UNKNOWN_THRESHOLD=none" in done.stderr


def test_recognize_refuses_uncalibrated_weights_without_a_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lfw_people: dict[str, list[Path]]
) -> None:
    from tests.standin_model import standin_weights_module

    monkeypatch.setitem(sys.modules, "facerec.recognition.weights", standin_weights_module())
    gallery = tmp_path / "g.pt"
    Gallery(["Ada"], np.eye(1, 512, dtype=np.float32), GalleryMeta(STANDIN_ID, 160, 14)).save(gallery)
    photo = str(next(iter(lfw_people.values()))[0])
    refused = CliRunner().invoke(main, ["recognize", "--gallery", str(gallery), photo])
    assert refused.exit_code == 1 and "no calibrated Unknown threshold" in refused.output
    closed = CliRunner().invoke(main, ["recognize", "--gallery", str(gallery), "--unknown-threshold", "none", photo])
    assert closed.exit_code == 0 and closed.stdout.strip().endswith(":Ada"), closed.output


@pytest.mark.parametrize("command", ["serve", "recognize", "verify"])
def test_help_says_what_the_threshold_options_do(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "--unknown-threshold DISTANCE|NONE" in text and "`none`: closed set" in text
    assert "--flip-tta / --no-flip-tta" in text
