"""Who is in a gallery file, read without torch (the web tier and `facerec serve` never import it).

A gallery file is a `torch.save` archive: a zip whose `<archive>/data.pkl` pickles the names next to the
embedding tensors (see `facerec.recognition.gallery`). The names are plain strings in that pickle; only the
tensors need torch. So this reader unpickles `data.pkl` with every torch class replaced by an inert
placeholder and the tensor data (the archive's other entries) never loaded. Reading the file itself, rather
than a sidecar written next to it, means every gallery already on disk (ours and the course's data.pt) works
and the names can never disagree with the embeddings.

The unpickler resolves nothing but those placeholders and a few builtins: a gallery file cannot run code here.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

from facerec.people import normalise_name

FORMAT_TAG = "facerec-gallery"  # the same tag `facerec.recognition.gallery` writes


class GalleryFileError(Exception):
    """The file cannot be read, or holds no list of names in a known gallery layout."""


class _Placeholder:
    """Stands for any torch object (tensor, storage, dtype, rebuild function) in the pickle."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Placeholder:
        return _Placeholder()

    def __setstate__(self, state: Any) -> None:
        pass


# Builtins that torch's pickles use around tensors (backward hooks, sizes); nothing that can execute code.
_ALLOWED_BUILTINS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): dict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
}


class _NamesUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" or module.startswith("torch."):
            return _Placeholder
        allowed = _ALLOWED_BUILTINS.get((module, name))
        if allowed is None:
            raise GalleryFileError(f"unexpected object {module}.{name} in the gallery file")
        return allowed

    def persistent_load(self, pid: Any) -> _Placeholder:
        return _Placeholder()  # a tensor's storage: left in the archive, never read


def _pickle_bytes(path: Path) -> bytes:
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.count("/") == 1 and name.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise GalleryFileError(f"{path} is not a torch.save archive (no data.pkl)")
            return archive.read(pickles[0])
    except zipfile.BadZipFile:
        raise GalleryFileError(f"{path} is not a gallery file (not a torch.save zip archive)") from None
    except OSError as exc:
        raise GalleryFileError(f"cannot read gallery {path}: {exc.strerror or exc}") from None


def _load(path: Path) -> Any:
    """The gallery file's pickle, read with torch objects as inert placeholders; GalleryFileError if damaged."""
    try:
        return _NamesUnpickler(io.BytesIO(_pickle_bytes(path))).load()
    except GalleryFileError:
        raise
    except Exception as exc:  # a damaged pickle raises many unrelated types
        raise GalleryFileError(f"{path}: unreadable gallery: {exc}") from None


def gallery_names(path: str | Path) -> list[str]:
    """The name of every entry in a gallery file, in file order (a name may repeat in a course data.pt)."""
    path = Path(path)
    loaded = _load(path)
    if isinstance(loaded, dict) and loaded.get("format") == FORMAT_TAG:
        names = loaded.get("names")
    elif isinstance(loaded, list | tuple) and len(loaded) == 2:  # the course's [embeddings, names]
        names = loaded[1]
    else:
        names = None
    if not isinstance(names, list | tuple) or not all(isinstance(name, str) for name in names):
        raise GalleryFileError(f"{path} is neither a facerec gallery nor a course data.pt")
    return list(names)


def gallery_unknown_threshold(path: str | Path) -> float | None:
    """The Unknown threshold recorded in a facerec gallery file's metadata (None: none recorded, or a course file)."""
    path = Path(path)
    loaded = _load(path)
    meta = loaded.get("meta") if isinstance(loaded, dict) and loaded.get("format") == FORMAT_TAG else None
    recorded = meta.get("unknown_threshold") if isinstance(meta, dict) else None
    return float(recorded) if isinstance(recorded, int | float) else None


def gallery_people(path: str | Path) -> dict[str, int]:
    """Person -> number of gallery entries (embeddings) for them, sorted by name.

    Names are put in the canonical form the API uses, so `DELETE /v1/people/<name>` recognizes them;
    a name the API could not hold is kept as it is (it is still recognized, and still listed)."""
    counts: Counter[str] = Counter()
    for name in gallery_names(path):
        try:
            counts[normalise_name(name)] += 1
        except ValueError:
            counts[name] += 1
    return dict(sorted(counts.items()))
