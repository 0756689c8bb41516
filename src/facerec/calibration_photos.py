"""The face photos the int8 embedding model is calibrated on: picked from a folder (by `facerec weights prepare
--int8`) and zipped for the AWS instances (by `facerec aws provision --calibration-dir`), which build the model
on their own CPU at first boot. No torch here: the `aws` commands run where torch may not be installed."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
UPLOADED_PHOTOS = 192
"""Photos `facerec aws provision` sends: twice the 96 crops the int8 build takes (`compiled.CALIBRATION_CROPS` +
`compiled.CHECK_CROPS`), as some photos have no face the detector finds."""


def photo_files(folder: Path) -> list[Path]:
    """Photos under `folder`, spread over its people: the n-th photo of every sub-folder before the (n+1)-th."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
    by_folder: dict[Path, list[Path]] = {}
    for file in files:
        by_folder.setdefault(file.parent, []).append(file)
    rounds = max((len(group) for group in by_folder.values()), default=0)
    return [group[n] for n in range(rounds) for group in by_folder.values() if n < len(group)]


def zip_photos(folder: Path, limit: int = UPLOADED_PHOTOS) -> tuple[bytes, int]:
    """The first `limit` of `photo_files(folder)` in a zip archive (stored, not compressed: JPEGs do not shrink),
    each under a numbered name so no name from this machine's folders travels with them; and how many."""
    chosen = photo_files(folder)[:limit]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for number, photo in enumerate(chosen):
            archive.writestr(f"{number:04d}{photo.suffix.lower()}", photo.read_bytes())
    return buffer.getvalue(), len(chosen)
