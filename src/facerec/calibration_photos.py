"""The face photos the int8 embedding model is calibrated on: picked from a folder (by `facerec weights prepare
--int8`) and zipped for the AWS instances (by `facerec aws provision --calibration-dir`), which build the model
on their own CPU at first boot. No torch here: the `aws` commands run where torch may not be installed."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from PIL import Image, ImageOps

from facerec.recognition.images import ALLOWED_FORMATS

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
CALIBRATION_CROPS = 64
"""Face crops the int8 model's activation ranges are measured on (more changed the embeddings by less than 0.005)."""
CHECK_CROPS = 32
"""Further crops, not calibrated on, on which the build measures the distance to fp32 it records."""
MIN_CALIBRATION_CROPS = 16
"""Fewer faces found in the calibration photos and nothing is built (workers embed in fp32)."""
UPLOADED_PHOTOS = 2 * (CALIBRATION_CROPS + CHECK_CROPS)
"""Photos `facerec aws provision` sends: twice the crops the int8 build takes, as some photos have no face the
detector finds."""
UPLOADED_MAX_SIDE = 1280
"""Larger photos are sent scaled down to this long side: the size a worker decodes them at (the default
FACEREC_DECODE_MAX_SIDE), and 192 phone photos would otherwise be about a gigabyte in the instance's memory (its
/tmp) beside the build."""


def photo_files(folder: Path) -> list[Path]:
    """Photos under `folder`, spread over its people: the n-th photo of every sub-folder before the (n+1)-th."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
    by_folder: dict[Path, list[Path]] = {}
    for file in files:
        by_folder.setdefault(file.parent, []).append(file)
    rounds = max((len(group) for group in by_folder.values()), default=0)
    return [group[n] for n in range(rounds) for group in by_folder.values() if n < len(group)]


def zip_photos(folder: Path, limit: int = UPLOADED_PHOTOS) -> tuple[bytes, int]:
    """The first `limit` readable photos of `photo_files(folder)` in a zip archive (stored, not compressed: JPEGs
    do not shrink), at most UPLOADED_MAX_SIDE on their long side, each under a numbered name so no name from this
    machine's folders travels with them; and how many."""
    buffer = io.BytesIO()
    count = 0
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for photo in photo_files(folder):
            if count == limit:
                break
            sendable = _sendable(photo.read_bytes())
            if sendable is None:
                continue  # not an image: calibration could not use it either
            data, suffix = sendable
            archive.writestr(f"{count:04d}{suffix or photo.suffix.lower()}", data)
            count += 1
    return buffer.getvalue(), count


def _sendable(data: bytes) -> tuple[bytes, str] | None:
    """The photo as sent (its own bytes and no new suffix, or a scaled-down upright JPEG), or None if unreadable."""
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:  # what a worker decodes
            if max(image.size) <= UPLOADED_MAX_SIDE:
                image.load()  # decoded whole: a truncated file is no photo
                return data, ""
            image.draft("RGB", (UPLOADED_MAX_SIDE, UPLOADED_MAX_SIDE))  # a JPEG decodes at 1/2..1/8 size, faster
            upright = ImageOps.exif_transpose(image).convert("RGB")  # the EXIF orientation is not re-encoded
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return None
    upright.thumbnail((UPLOADED_MAX_SIDE, UPLOADED_MAX_SIDE), Image.Resampling.LANCZOS)
    scaled = io.BytesIO()
    upright.save(scaled, "JPEG", quality=95)
    return scaled.getvalue(), ".jpg"
