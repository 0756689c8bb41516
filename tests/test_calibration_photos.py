"""The calibration photos `facerec aws provision --calibration-dir` sends: only photos a worker can decode, no
larger than it decodes them, under names that say nothing of this machine's folders."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from PIL import Image

from facerec.calibration_photos import UPLOADED_MAX_SIDE, zip_photos


def _jpeg(size: tuple[int, int], exif_orientation: int | None = None) -> bytes:
    out = io.BytesIO()
    exif = Image.Exif()
    if exif_orientation is not None:
        exif[0x0112] = exif_orientation
    Image.new("RGB", size, (90, 120, 150)).save(out, "JPEG", quality=90, exif=exif)
    return out.getvalue()


def test_only_whole_photos_are_sent_and_large_ones_upright_at_the_workers_size(tmp_path: Path) -> None:
    whole = _jpeg((800, 600))
    (tmp_path / "a-whole.jpg").write_bytes(whole)
    (tmp_path / "b-truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "c-text.png").write_text("<svg/>")
    # 4000x1000 stored sideways (EXIF orientation 6: rotate 90 degrees): upright it is 1000x4000.
    (tmp_path / "d-sideways.jpg").write_bytes(_jpeg((4000, 1000), exif_orientation=6))
    archive, count = zip_photos(tmp_path)
    assert count == 2
    with zipfile.ZipFile(io.BytesIO(archive)) as photos:
        assert photos.namelist() == ["0000.jpg", "0001.jpg"]
        assert photos.read("0000.jpg") == whole  # small enough: its own bytes
        assert Image.open(io.BytesIO(photos.read("0001.jpg"))).size == (UPLOADED_MAX_SIDE // 4, UPLOADED_MAX_SIDE)
