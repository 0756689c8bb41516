"""MTCNN's R-Net and O-Net compiled by `facerec weights prepare --detector`: they load without compiling, give the
eager networks' outputs and so the same faces, and missing, stale or corrupt packages leave the eager ones."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from facenet_pytorch.models.mtcnn import ONet, RNet

from facerec.recognition import compiled_detector
from facerec.recognition.detection import FaceDetector
from facerec.recognition.images import decode_image
from facerec.settings import Settings
from tests.paths import DATASETS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _loaded_or_skip(settings: Settings) -> dict[str, compiled_detector.CompiledNet]:
    loaded = compiled_detector.load(settings)
    if isinstance(loaded, str):
        pytest.skip(
            f"compiled detector unusable here ({loaded}); CI builds it with `facerec weights prepare --detector`"
        )
    return loaded


def test_the_compiled_nets_give_the_eager_outputs_at_any_batch_size() -> None:
    loaded = _loaded_or_skip(Settings())
    for name, eager in (("rnet", RNet().eval()), ("onet", ONet().eval())):
        side = compiled_detector.NET_SIDES[name]
        difference = compiled_detector.largest_difference(eager, loaded[name], side, sizes=(1, 2, 5, 129))
        assert difference <= compiled_detector.MAX_DIFFERENCE, name


def test_the_compiled_detector_finds_the_same_faces_in_real_photos() -> None:
    settings = Settings()
    _loaded_or_skip(settings)
    files = sorted((DATASETS / "lfw_small").rglob("*.jpg"))[:48]
    assert len(files) == 48
    images = [decode_image(p.read_bytes(), settings.max_image_pixels, settings.decode_max_side) for p in files]
    compiled = FaceDetector(settings)
    eager = FaceDetector(settings.model_copy(update={"detector_variant": "eager"}))
    assert compiled.compiled and not eager.compiled
    every = [index % 4 == 0 for index in range(len(images))]
    for start in range(0, len(images), 16):
        chunk, wanted = images[start : start + 16], every[start : start + 16]
        for ours, theirs in zip(compiled.detect(chunk, wanted), eager.detect(chunk, wanted), strict=True):
            assert (ours is None) == (theirs is None)
            if ours is None or theirs is None:
                continue
            assert ours.faces == theirs.faces and len(ours.others) == len(theirs.others)
            np.testing.assert_allclose(ours.box, theirs.box, atol=0.01)
            assert torch.allclose(ours.crop, theirs.crop, atol=0.02)


def test_missing_packages_leave_the_eager_nets_and_say_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(weights_cache_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="facerec.recognition.detection"):
        detector = FaceDetector(settings)
    assert not detector.compiled and isinstance(detector.nets.rnet, RNet) and isinstance(detector.nets.onet, ONet)
    fallbacks = [r for r in caplog.records if r.getMessage() == "detector_compiled_unavailable_using_eager"]
    assert len(fallbacks) == 1 and "not built" in fallbacks[0].__dict__["reason"]
    # Asked for the eager nets: nothing is looked up, nothing logged.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="facerec.recognition.detection"):
        assert not FaceDetector(settings.model_copy(update={"detector_variant": "eager"})).compiled
    assert not caplog.records


def test_packages_built_for_other_weights_torch_or_cpu_are_stale_and_corrupt_ones_refused(tmp_path: Path) -> None:
    settings = Settings(weights_cache_dir=tmp_path)
    folder = compiled_detector.package_dir(settings)
    stamp = compiled_detector.expected_stamp()
    assert compiled_detector.stale_reason(folder, stamp) is not None  # nothing there
    folder.mkdir(parents=True)
    for name in compiled_detector.NET_SIDES:
        (folder / f"{name}.pt2").write_bytes(b"not a package")
    sidecar = {**stamp, "sha256": dict.fromkeys(compiled_detector.NET_SIDES, "0" * 64)}
    (folder / "detector.json").write_text(json.dumps(sidecar))
    assert compiled_detector.stale_reason(folder, stamp) is None
    for key, other in (
        ("weights_sha256", {"rnet": "b" * 64}),
        ("torch", "0.0.1"),
        ("cpu_capability", "NO AVX"),
        ("cpu_features", ["avx2", "avx512f"]),  # an "AVX512" CPU without features the package may use
    ):
        reason = compiled_detector.stale_reason(folder, {**stamp, key: other})
        assert reason is not None and key in reason
    # The sidecar matches, the files do not: not loaded, and the answer says to rebuild.
    loaded = compiled_detector.load(settings)
    assert isinstance(loaded, str) and "checksum" in loaded


def test_without_a_compiler_prepare_says_so_and_workers_keep_the_eager_nets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stock cloud image has no C++ compiler: the instance's first boot runs `weights prepare --detector`
    anyway, and it must end well (exit 0, no package) so the worker is still installed and started."""
    import torch._inductor.config as inductor_config
    from click.testing import CliRunner

    from facerec.cli.weights import weights

    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, str(tmp_path / "no-such-g++")))
    result = CliRunner().invoke(weights, ["prepare", "--detector", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "detector: not built: " in result.output and "workers run the eager R-Net and O-Net" in result.output
    assert "no-such-g++" in result.output  # says which compiler it looked for
    assert compiled_detector.read_sidecar(compiled_detector.package_dir(Settings(weights_cache_dir=tmp_path))) is None
