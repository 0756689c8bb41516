"""Worker decode memory: large JPEGs are decoded at reduced size, a batch splits at the pixel budget, and a
batch of 16 x 40 Mpx JPEGs keeps the recognition process under 1 GB (measured in a fresh subprocess)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from facerec.recognition.images import decode_image, decoded_pixels, decoded_scale
from tests.paths import DATASETS

pytestmark = pytest.mark.timeout(120)

LIMIT = 40_000_000


def _jpeg(image: Image.Image, quality: int = 75) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def test_a_large_jpeg_is_decoded_at_reduced_size_and_says_by_how_much() -> None:
    data = _jpeg(Image.new("RGB", (8000, 5000), (120, 90, 70)))
    assert decoded_pixels(data, 1280) == 2000 * 1250  # from the header, before any pixel is decoded
    image = decode_image(data, LIMIT, max_side=1280)
    assert image.size == (2000, 1250) and decoded_scale(image) == 4.0
    full = decode_image(data, LIMIT)
    assert full.size == (8000, 5000) and decoded_scale(full) == 1.0


def test_boxes_of_a_reduced_decode_are_in_the_uploaded_images_pixels() -> None:
    from facerec.recognition.recognizer import Recognizer
    from facerec.settings import Settings
    from tests.standin_model import STANDIN_ID, standin_model

    photo = sorted((DATASETS / "lfw_small").rglob("*.jpg"))[0]
    small = Image.open(photo).convert("RGB")
    large = small.resize((2000, 2000), Image.Resampling.BICUBIC)
    settings = Settings(unknown_threshold="none", decode_max_side=250)
    recognizer = Recognizer(settings, model=standin_model(), model_id=STANDIN_ID)
    at_250, at_2000 = recognizer.recognize([_jpeg(small, 95), _jpeg(large, 95)])
    assert at_250.box is not None and at_2000.box is not None
    for near, far in zip(at_250.box, at_2000.box, strict=True):
        assert far == pytest.approx(near * 8, abs=8 * 6)  # decoded at 1/8: the same face, 8x the coordinates


WORKER = textwrap.dedent(
    """
    import json, sys
    from facerec.worker.memory import lean_worker_process

    lean_worker_process()  # as `facerec worker` does, before torch is imported
    from facenet_pytorch import InceptionResnetV1
    from facerec.recognition.recognizer import Recognizer
    from facerec.settings import Settings

    settings = Settings(unknown_threshold="none")
    recognizer = Recognizer(settings, model=InceptionResnetV1(classify=False), model_id="rss-probe")
    recognizer.warm_up()
    data = open(sys.argv[1], "rb").read()
    outcomes = recognizer.recognize([data] * settings.batch_max)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over execve, so it would report pytest's own peak.
    hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
    peak_mb = int(hwm.split()[1]) / 1024
    print(json.dumps({"images": len(outcomes), "no_face": sum(o.no_face for o in outcomes), "peak_mb": peak_mb}))
    """
)


def test_sixteen_40_megapixel_jpegs_stay_under_a_gigabyte(tmp_path: Path) -> None:
    photo = tmp_path / "40mpx.jpg"
    # A flat colour: 40 Mpx in a few hundred KB, made here so the measured process never holds it whole.
    photo.write_bytes(_jpeg(Image.new("RGB", (7750, 5160), (150, 120, 100)), quality=60))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(photo)], capture_output=True, text=True, timeout=110, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["images"] == 16 and report["no_face"] == 16
    # Decoded whole, the 16 images alone would be 16 x 40 Mpx x 3 bytes = 1.9 GB.
    assert report["peak_mb"] < 1024, report
