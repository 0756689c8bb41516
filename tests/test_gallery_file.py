"""Reading the names in a gallery file without torch (what the web tier and `facerec serve` do)."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from facerec.gallery_file import GalleryFileError, gallery_names, gallery_people
from facerec.recognition.gallery import Gallery, GalleryMeta


def test_names_of_our_format_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "gallery.pt"
    names = ["Zoë", "Ada Lovelace", "Bob"]
    Gallery(names, np.eye(3, 512, dtype=np.float32), GalleryMeta(weights="w", crop_size=160, margin=14)).save(path)
    assert gallery_names(path) == names
    assert gallery_people(path) == {"Ada Lovelace": 1, "Bob": 1, "Zoë": 1}


def test_course_format_counts_repeated_names(tmp_path: Path) -> None:
    path = tmp_path / "data.pt"
    torch.save([[torch.zeros(1, 512) for _ in range(3)], ["Paul", "Ann", "Paul"]], path)
    assert gallery_people(path) == {"Ann": 1, "Paul": 2}


def test_the_course_data_pt(cse546_dir: Path) -> None:
    listed = gallery_people(cse546_dir / "data_vggface2.pt")
    assert "Paul" in listed and sum(listed.values()) == len(gallery_names(cse546_dir / "data_vggface2.pt"))


@pytest.mark.parametrize(
    "content",
    [b"not a zip at all", b""],
)
def test_a_file_that_is_no_archive_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(GalleryFileError, match="not a gallery file"):
        gallery_names(path)


def test_other_torch_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dict.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(GalleryFileError, match=r"neither a facerec gallery nor a course data\.pt"):
        gallery_names(path)
    with pytest.raises(GalleryFileError, match="cannot read"):
        gallery_names(tmp_path / "missing.pt")


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    buffer = io.BytesIO()
    pickle.dump({"format": "facerec-gallery", "names": [_Exploit()]}, buffer)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
    with pytest.raises(GalleryFileError, match="unexpected object"):
        gallery_names(path)


def test_reading_names_never_imports_torch_or_numpy(tmp_path: Path) -> None:
    path = tmp_path / "gallery.pt"
    Gallery(["Ada"], np.eye(1, 512, dtype=np.float32), GalleryMeta(weights="w", crop_size=160, margin=14)).save(path)
    script = (
        "import sys; from facerec.gallery_file import gallery_people; "
        f"print(gallery_people({str(path)!r}), sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "{'Ada': 1} []"
