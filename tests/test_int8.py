"""The int8 embedding model built by `facerec weights prepare --int8`: it loads without compiling, embeds real
photos within the documented distance of fp32, and a missing or stale package leaves the worker on fp32."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from facerec.recognition import compiled
from facerec.recognition.gallery import GalleryMeta
from facerec.recognition.recognizer import Recognizer
from facerec.recognition.weights import weights_id, weights_sha256
from facerec.settings import Settings
from tests.model_memo import memoise_model_work

# The real model on a busy 2-core machine (CI, or a benchmark beside it) needs more than the default 60 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MAX_DISTANCE_TO_FP32 = 0.1
"""docs/benchmarks.md: measured median 0.03, p95 0.04, max 0.05 on held-out lfw_small crops."""


def _package_or_skip(settings: Settings) -> None:
    checksum = weights_sha256(settings)
    folder = compiled.package_dir(settings, weights_id(settings))
    reason = compiled.stale_reason(folder, compiled.expected_stamp(settings, weights_id(settings), checksum or ""))
    if checksum is None or reason is not None:
        pytest.skip(f"int8 package unusable here ({reason}); CI builds it with `facerec weights prepare --int8`")


def test_the_prepared_int8_package_embeds_real_photos_near_fp32(
    lfw_people: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _package_or_skip(Settings())
    memoise_model_work(monkeypatch)  # the fp32 side: detection and embeddings other tests compute as well
    photos = [paths[3].read_bytes() for paths in list(lfw_people.values())[:5]]
    fp32 = Recognizer(Settings(embedding_variant="fp32"), threshold_needed=False)
    int8 = Recognizer(Settings(embedding_variant="int8"), threshold_needed=False)
    assert (fp32.variant, int8.variant) == ("fp32", "int8")
    assert int8.model is None, "the fp32 weights are not loaded beside the int8 package"
    assert int8.gallery_meta().embedding_variant == "int8"

    expected, got = fp32.embed(photos), int8.embed(photos)
    assert all(isinstance(vector, np.ndarray) for vector in [*expected, *got]), "every photo has a face"
    distances = np.linalg.norm(np.stack(got) - np.stack(expected), axis=1)  # type: ignore[arg-type]
    np.testing.assert_allclose(np.linalg.norm(np.stack(got), axis=1), 1.0, atol=1e-5)  # type: ignore[arg-type]
    assert distances.max() < MAX_DISTANCE_TO_FP32, distances
    assert distances.min() > 0, "int8 arithmetic differs from fp32: the package really ran"
    # A chunk smaller than the compiled batch is padded: a face's embedding does not depend on its neighbours.
    single = int8.embed(photos[:1])[0]
    assert isinstance(single, np.ndarray)
    assert np.linalg.norm(single - got[0]) < 1e-4  # type: ignore[operator]


def test_a_missing_package_leaves_the_recognizer_on_fp32_and_says_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    memoise_model_work(monkeypatch)
    monkeypatch.setattr(compiled, "package_dir", lambda settings, model_id: tmp_path / "nothing-built")
    with caplog.at_level(logging.INFO, logger="facerec.recognition.recognizer"):
        recognizer = Recognizer(Settings(embedding_variant="int8"), threshold_needed=False)
    assert recognizer.variant == "fp32" and recognizer.model is not None
    assert recognizer.gallery_meta().embedding_variant == "fp32"
    fallbacks = [r for r in caplog.records if r.getMessage() == "int8_unavailable_using_fp32"]
    assert len(fallbacks) == 1
    assert "not built" in fallbacks[0].__dict__["reason"]


def _fake_package(folder: Path, stamp: dict[str, object], content: bytes = b"not a package") -> None:
    folder.mkdir(parents=True)
    for size in compiled.INT8_BATCHES:
        (folder / f"b{size}.pt2").write_bytes(content)
    sidecar = {**stamp, "sha256": {str(size): "0" * 64 for size in compiled.INT8_BATCHES}}
    (folder / "int8.json").write_text(json.dumps(sidecar))


def test_a_package_built_for_other_weights_torch_or_cpu_is_stale(tmp_path: Path) -> None:
    settings = Settings(weights_cache_dir=tmp_path)
    stamp = compiled.expected_stamp(settings, "casia-webface", "a" * 64)
    folder = compiled.package_dir(settings, "casia-webface")
    assert compiled.stale_reason(folder, stamp) is not None  # nothing there
    _fake_package(folder, stamp)
    assert compiled.stale_reason(folder, stamp) is None
    for key, other in (
        ("weights_sha256", "b" * 64),
        ("torch", "0.0.1"),
        ("cpu_capability", "NO AVX"),
        ("cpu_features", ["avx2", "avx512f"]),  # an "AVX512" CPU without features the package may use
    ):
        reason = compiled.stale_reason(folder, {**stamp, key: other})
        assert reason is not None and key in reason
    # The sidecar matches, the file does not: not loaded, and the answer says to rebuild.
    loaded = compiled.load_int8(settings, "casia-webface", "a" * 64)
    assert isinstance(loaded, str) and "checksum" in loaded


def test_galleries_record_the_variant_and_older_ones_read_as_fp32() -> None:
    older = {"weights": "casia-webface", "crop_size": 160, "margin": 14}  # saved before the field existed
    assert GalleryMeta(**older).embedding_variant == "fp32"  # type: ignore[arg-type]
    meta = GalleryMeta(**older, embedding_variant="int8")  # type: ignore[arg-type]
    assert meta.differences("casia-webface", Settings()) == [], "either variant matches the other's gallery"


def test_without_a_compiler_the_int8_build_is_refused_and_leaves_no_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`weights prepare --int8` on an instance without a C++ compiler must end with "not built" (workers embed in
    fp32), not a traceback that stops the instance's first boot. A small network stands in for the model."""
    import torch
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, str(tmp_path / "no-such-g++")))
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    ).eval()
    crops = torch.rand((20, 3, 24, 24), generator=torch.Generator().manual_seed(0))
    with pytest.raises(compiled.Int8Unavailable, match="no-such-g\\+\\+"):
        compiled.build_int8(model, crops[:16], crops[16:], tmp_path / "int8", {"stamp": 1}, "test crops")
    assert compiled.read_sidecar(tmp_path / "int8") is None


def test_packages_record_the_cpus_features_and_run_where_all_of_them_are(tmp_path: Path) -> None:
    """Two "AVX512" CPUs can differ in VNNI and BF16, which `-march=native` code may use: a package built on a
    Skylake-SP runs on a Cascade Lake (it has more), not the other way round."""
    skylake, cascade = tmp_path / "skylake", tmp_path / "cascade"
    skylake.write_text("processor\t: 0\nflags\t\t: fpu constant_tsc avx2 fma avx512f hypervisor\nprocessor\t: 1\n")
    cascade.write_text("processor\t: 0\nflags\t\t: fpu rep_good avx512_vnni avx512f fma avx2\n")
    assert compiled.cpu_features(skylake) == ["avx2", "avx512f", "fma"]  # not fpu, constant_tsc, hypervisor
    assert compiled.cpu_features(cascade) == ["avx2", "avx512_vnni", "avx512f", "fma"]
    settings = Settings(weights_cache_dir=tmp_path)
    folder = compiled.package_dir(settings, "casia-webface")
    stamp = compiled.expected_stamp(settings, "casia-webface", "a" * 64)
    _fake_package(folder, {**stamp, "cpu_features": compiled.cpu_features(skylake)})
    assert compiled.stale_reason(folder, {**stamp, "cpu_features": compiled.cpu_features(cascade)}) is None
    shutil.rmtree(folder)
    _fake_package(folder, {**stamp, "cpu_features": compiled.cpu_features(cascade)})
    reason = compiled.stale_reason(folder, {**stamp, "cpu_features": compiled.cpu_features(skylake)})
    assert reason == "built for other cpu_features (this CPU lacks avx512_vnni)"
    # ARM lists "Features"; a platform without /proc/cpuinfo only trusts a package built on its own kind.
    graviton2, graviton3 = tmp_path / "graviton2", tmp_path / "graviton3"
    graviton2.write_text("processor\t: 0\nFeatures\t: fp asimd aes crc32 atomics\nCPU part\t: 0xd0c\n")
    graviton3.write_text("processor\t: 0\nFeatures\t: fp asimd aes crc32 atomics sve bf16 svebf16\n")
    assert set(compiled.cpu_features(graviton2)) < set(compiled.cpu_features(graviton3))
    assert compiled.cpu_features(tmp_path / "no-cpuinfo")[0].startswith("processor:")
    assert compiled.expected_stamp(Settings(), "w", "s")["cpu_features"] == compiled.cpu_features()
