"""Galleries: per-person means, nearest search, our file format, the course's data.pt, mismatch refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from facerec.recognition.gallery import (
    Gallery,
    GalleryError,
    GalleryMeta,
    GalleryMismatch,
    load_gallery,
    unit,
)
from facerec.settings import Settings

META = GalleryMeta(weights="w-1", crop_size=160, margin=14)


def random_unit(rows: int, seed: int) -> np.ndarray:
    return unit(np.random.default_rng(seed).normal(size=(rows, 512)))


def test_entry_is_the_renormalised_mean_of_unit_embeddings() -> None:
    a, b = random_unit(2, seed=1)
    gallery = Gallery.from_people({"zed": [a * 3.0, b], "amy": [a]}, META)
    assert gallery.names == ["amy", "zed"]
    expected = (a + b) / np.linalg.norm(a + b)
    np.testing.assert_allclose(gallery.embeddings[1], expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(gallery.embeddings, axis=1), 1.0, atol=1e-6)


def test_people_without_embeddings_are_left_out() -> None:
    gallery = Gallery.from_people({"amy": random_unit(1, 2), "nobody": []}, META)
    assert gallery.names == ["amy"]
    assert len(Gallery.from_people({"nobody": []}, META)) == 0


def test_nearest_matches_brute_force() -> None:
    gallery = Gallery([f"p{i}" for i in range(20)], random_unit(20, seed=3), META)
    queries = random_unit(7, seed=4)
    indices, distances = gallery.nearest(queries)
    brute = np.linalg.norm(queries[:, None, :] - gallery.embeddings[None, :, :], axis=2)
    np.testing.assert_array_equal(indices, brute.argmin(axis=1))
    np.testing.assert_allclose(distances, brute.min(axis=1), atol=1e-6)
    _, self_distances = gallery.nearest(gallery.embeddings)
    assert self_distances.max() < 1e-6


def test_round_trip_keeps_names_embeddings_and_metadata(tmp_path: Path) -> None:
    gallery = Gallery(["a", "b", "c"], random_unit(3, seed=5), META)
    path = tmp_path / "sub" / "gallery.pt"
    gallery.save(path)
    loaded = load_gallery(path, Settings())
    assert loaded.names == gallery.names
    assert loaded.meta == gallery.meta
    np.testing.assert_array_equal(loaded.embeddings, gallery.embeddings)
    assert [p.name for p in path.parent.iterdir()] == ["gallery.pt"]  # no temporary file left behind


def test_empty_gallery_round_trips(tmp_path: Path) -> None:
    Gallery.empty(META).save(tmp_path / "g.pt")
    assert len(load_gallery(tmp_path / "g.pt", Settings())) == 0


def test_mismatched_settings_are_refused_with_the_differences() -> None:
    gallery = Gallery(["a"], random_unit(1, seed=6), META)
    gallery.check_compatible("w-1", Settings(crop_size=160, margin=14))
    with pytest.raises(GalleryMismatch, match=r"crop_size: gallery 160, model 240"):
        gallery.check_compatible("w-1", Settings(crop_size=240, margin=14))
    with pytest.raises(GalleryMismatch, match=r"weights: gallery 'w-1', model 'w-2'"):
        gallery.check_compatible("w-2", Settings())


def test_not_a_gallery_is_a_gallery_error(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(GalleryError):
        load_gallery(tmp_path / "junk.pt", Settings())
    torch.save({"something": "else"}, tmp_path / "dict.pt")
    with pytest.raises(GalleryError, match="neither"):
        load_gallery(tmp_path / "dict.pt", Settings())
    with pytest.raises(GalleryError, match="cannot read"):
        load_gallery(tmp_path / "missing.pt", Settings())


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    Gallery(["a"], random_unit(1, seed=7), META).save(tmp_path / "g.pt")
    payload = torch.load(tmp_path / "g.pt", weights_only=True)
    payload["version"] = 99
    torch.save(payload, tmp_path / "g.pt")
    with pytest.raises(GalleryError, match="version 99"):
        load_gallery(tmp_path / "g.pt", Settings())


def write_course_gallery(path: Path, names: list[str]) -> np.ndarray:
    vectors = np.random.default_rng(8).normal(size=(len(names), 512)).astype(np.float32)
    torch.save([[torch.from_numpy(v).reshape(1, 512) for v in vectors], names], path)
    return vectors


def test_course_format_needs_its_settings_stated(tmp_path: Path) -> None:
    write_course_gallery(tmp_path / "data.pt", ["Paul", "Bob"])
    with pytest.raises(GalleryMismatch, match="course-format"):
        load_gallery(tmp_path / "data.pt", Settings())
    gallery = load_gallery(tmp_path / "data.pt", Settings(course_gallery_made_with="vggface2:240:0"))
    assert gallery.names == ["Paul", "Bob"]
    assert (gallery.meta.weights, gallery.meta.crop_size, gallery.meta.margin) == ("vggface2", 240, 0)
    np.testing.assert_allclose(np.linalg.norm(gallery.embeddings, axis=1), 1.0, atol=1e-6)
    # The stated settings must match the running model's.
    gallery.check_compatible("any-id", Settings(weights="vggface2", crop_size=240, margin=0))
    with pytest.raises(GalleryMismatch):
        gallery.check_compatible("any-id", Settings(weights="casia-webface", crop_size=160, margin=14))


def test_the_course_data_pt_loads(cse546_dir: Path) -> None:
    settings = Settings(course_gallery_made_with="vggface2:240:0")
    gallery = load_gallery(cse546_dir / "data_vggface2.pt", settings)
    assert len(gallery) == 90
    assert gallery.embeddings.shape == (90, 512)
    assert "Paul" in gallery.names
