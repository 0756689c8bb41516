"""The GraphDef reader, on graphs encoded here with a tiny protobuf writer, and on the real FaceNet graph."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from facerec.recognition.graphdef import (
    GraphDefError,
    TensorValue,
    const_value,
    facenet_graph_path,
    iter_nodes,
    read_graph,
    read_varint,
)

# --- a minimal protobuf writer (the reader's mirror image) -------------------------------------------------


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32/int64 go out as 10-byte two's complement, as protobuf does
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def field_bytes(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def field_float(number: int, value: float) -> bytes:
    return varint(number << 3 | 5) + struct.pack("<f", value)


def field_fixed64(number: int, value: int) -> bytes:
    return varint(number << 3 | 1) + struct.pack("<Q", value)


def shape(*dims: int) -> bytes:
    return b"".join(field_bytes(2, field_varint(1, dim)) for dim in dims)


def tensor(dtype: int, dims: tuple[int, ...], *fields: bytes) -> bytes:
    return field_varint(1, dtype) + field_bytes(2, shape(*dims)) + b"".join(fields)


def attr(key: str, value: bytes) -> bytes:
    return field_bytes(5, field_bytes(1, key.encode()) + field_bytes(2, value))


def node(name: str, op: str, inputs: tuple[str, ...] = (), *attrs: bytes) -> bytes:
    body = field_bytes(1, name.encode()) + field_bytes(2, op.encode())
    body += b"".join(field_bytes(3, item.encode()) for item in inputs)
    return field_bytes(1, body + b"".join(attrs))


def const(name: str, tensor_proto: bytes) -> bytes:
    return node(name, "Const", (), attr("dtype", field_varint(6, 1)), attr("value", field_bytes(8, tensor_proto)))


# --- hand-built graphs --------------------------------------------------------------------------------------

KERNEL = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5) / 7  # 480 bytes: a 2-byte length


def small_graph() -> bytes:
    packed_floats = struct.pack("<3f", 0.5, -1.25, 3.0)
    int_vals = field_varint(7, 7) + field_varint(7, -1)  # unpacked, the second a 10-byte varint
    conv_attrs = (
        attr("strides", field_bytes(1, field_bytes(3, b"".join(varint(v) for v in (1, 2, 2, 1))))),
        attr("padding", field_bytes(2, b"SAME")),
        attr("T", field_varint(6, 1)),
        attr("epsilon", field_float(4, 0.001)),
        attr("is_training", field_varint(5, 0)),
    )
    return b"".join(
        [
            node("input", "Placeholder", (), attr("shape", field_bytes(7, shape(-1, 160, 160, 3)))),
            const("kernel", tensor(1, KERNEL.shape, field_bytes(4, KERNEL.tobytes()))),
            const("offset", tensor(1, (3,), field_bytes(5, packed_floats))),
            const("ints", tensor(3, (2,), int_vals)),
            const("fill", tensor(1, (2, 300), field_float(5, 0.25))),  # one value broadcast; 300 is 2 bytes
            const("scalar", tensor(1, (), field_float(5, 0.17))),
            node("conv", "Conv2D", ("input:0", "kernel", "^offset"), *conv_attrs),
            field_bytes(2, b"a library this reader skips"),
            field_fixed64(99, 12345),  # an unknown field of another wire type
        ]
    )


def test_varints_single_and_multi_byte() -> None:
    assert read_varint(memoryview(b"\x01"), 0) == (1, 1)
    assert read_varint(memoryview(b"\xac\x02"), 0) == (300, 2)
    assert read_varint(memoryview(varint(-1)), 0) == ((1 << 64) - 1, 10)
    assert varint(300) == b"\xac\x02"


def test_nodes_attrs_and_tensors() -> None:
    nodes = {n.name: n for n in iter_nodes(small_graph())}

    assert list(nodes) == ["input", "kernel", "offset", "ints", "fill", "scalar", "conv"]
    assert nodes["input"].attrs["shape"] == (-1, 160, 160, 3)
    conv = nodes["conv"]
    assert conv.op == "Conv2D"
    assert conv.inputs == ("input:0", "kernel", "^offset")
    assert conv.attrs["strides"] == [1, 2, 2, 1]
    assert conv.attrs["padding"] == b"SAME"
    assert conv.attrs["T"] == 1
    assert conv.attrs["epsilon"] == pytest.approx(0.001)
    assert conv.attrs["is_training"] is False

    kernel = const_value(nodes["kernel"])
    assert kernel.dtype == np.float32
    np.testing.assert_array_equal(kernel, KERNEL)
    np.testing.assert_array_equal(const_value(nodes["offset"]), np.array([0.5, -1.25, 3.0], np.float32))
    ints = const_value(nodes["ints"])
    assert ints.dtype == np.int32
    np.testing.assert_array_equal(ints, [7, -1])
    fill = const_value(nodes["fill"])
    assert fill.shape == (2, 300)
    assert np.all(fill == np.float32(0.25))
    scalar = nodes["scalar"].attrs["value"]
    assert isinstance(scalar, TensorValue)
    assert scalar.array.shape == ()
    assert float(scalar.array) == pytest.approx(0.17)


def test_const_value_refuses_other_ops() -> None:
    nodes = {n.name: n for n in iter_nodes(small_graph())}
    with pytest.raises(GraphDefError, match="not a Const"):
        const_value(nodes["conv"])


def test_truncated_graph_is_an_error() -> None:
    data = small_graph()
    with pytest.raises(GraphDefError):
        list(iter_nodes(data[: len(data) // 2]))


def test_tensor_content_of_the_wrong_size_is_an_error() -> None:
    bad = const("bad", tensor(1, (4,), field_bytes(4, b"\x00" * 12)))
    with pytest.raises(GraphDefError, match="tensor_content"):
        list(iter_nodes(bad))


def test_duplicate_node_names_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "graph.pb"
    path.write_bytes(node("a", "NoOp") + node("a", "NoOp"))
    with pytest.raises(GraphDefError, match="duplicate"):
        read_graph(path)


# --- the real graph -----------------------------------------------------------------------------------------


def test_facenet_graph() -> None:
    path = facenet_graph_path()
    nodes = read_graph(path)

    assert len(nodes) > 700
    assert nodes["input"].op == "Placeholder"
    assert nodes["input"].attrs["shape"] == (1, 160, 160, 3)  # NHWC, one image per run
    assert nodes["embeddings"].op == "Mul"
    first = const_value(nodes["InceptionResnetV1/Conv2d_1a_3x3/weights"])
    assert first.shape == (3, 3, 3, 32)
    assert first.dtype == np.float32
    assert const_value(nodes["InceptionResnetV1/Bottleneck/weights"]).shape == (1792, 512)
    assert float(const_value(nodes["InceptionResnetV1/Repeat/block35_1/mul/x"])) == pytest.approx(0.17)
