"""A GGUF file's metadata and tensor shapes, read from its header alone.

`gguf.GGUFReader` maps every metadata value into numpy views, the vocabulary's 49k token strings
included: about 2 s for the default model, most of the GGUF LoRA conversion that runs after every
training run. The converter needs a few numbers and the tensor shapes, so this walks the header
once with `struct` and skips array values it isn't asked for (about 30 ms).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGUF_MAGIC, GGUFValueType

# struct formats of the fixed-size value types (little-endian, as GGUF files are written)
_SCALARS = {
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d",
}


@dataclass
class GGUFHeader:
    metadata: dict  # key -> scalar or string; arrays are left out
    tensor_shapes: dict[str, tuple[int, ...]]  # name -> shape in numpy order (rows, cols)
    tensor_types: dict[str, int] = field(default_factory=dict)  # name -> GGMLQuantizationType value
    tensor_offsets: dict[str, int] = field(default_factory=dict)  # name -> byte offset in the file


class _Cursor:
    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, fmt: str):
        value = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return value[0] if len(value) == 1 else value

    def string(self) -> str:
        length = self.take("Q")
        text = self.data[self.at : self.at + length]
        if len(text) != length:
            raise ValueError("the file ends inside a string")
        self.at += length
        return text.decode("utf-8", errors="replace")

    def skip_array(self) -> None:
        item_type, count = GGUFValueType(self.take("I")), self.take("Q")
        if item_type in _SCALARS:
            self.at += count * struct.calcsize(_SCALARS[item_type])
        elif item_type == GGUFValueType.STRING:
            for _ in range(count):
                length = self.take("Q")  # not `self.at += self.take(...)`: that adds to the old position
                self.at += length
        else:  # arrays of arrays: walk each
            for _ in range(count):
                self.value(item_type)

    def array(self) -> list:
        item_type, count = GGUFValueType(self.take("I")), self.take("Q")
        return [self.value(item_type) for _ in range(count)]

    def value(self, value_type: GGUFValueType, keep_array: bool = False):
        if value_type == GGUFValueType.STRING:
            return self.string()
        if value_type == GGUFValueType.ARRAY:
            if keep_array:
                return self.array()
            self.skip_array()
            return None
        return self.take(_SCALARS[value_type])


MAX_HEADER = 1 << 28  # 256 MiB: far above any real vocabulary; a corrupt length must not read a whole model


def read_header(path: str | Path, chunk: int = 1 << 20, arrays: tuple[str, ...] = ()) -> GGUFHeader:
    """The metadata (arrays left out, but for the keys in `arrays`) and tensor shapes of a little-endian
    GGUF (versions 2 and 3).

    Raises ValueError or OSError on a file that isn't one.
    """
    with open(path, "rb") as fh:
        data = fh.read(chunk)
        while True:  # the header's size isn't known up front: read more until it parses
            try:
                return _parse(data, arrays)
            except (struct.error, ValueError) as exc:
                more = fh.read(len(data)) if len(data) < MAX_HEADER else b""
                if not more:
                    raise ValueError(f"not a readable GGUF header ({exc})") from None
                data += more


def _parse(data: bytes, arrays: tuple[str, ...] = ()) -> GGUFHeader:
    cursor = _Cursor(data)
    magic, version = cursor.take("II")
    if magic != GGUF_MAGIC:
        raise OSError("not a GGUF file (bad magic)")  # OSError: more data will not fix this
    if version not in (2, 3):
        raise OSError(f"GGUF version {version} is not supported here")
    n_tensors, n_kv = cursor.take("QQ")
    metadata = {}
    for _ in range(n_kv):
        key = cursor.string()
        value_type = GGUFValueType(cursor.take("I"))
        value = cursor.value(value_type, keep_array=key in arrays)
        if value_type != GGUFValueType.ARRAY or key in arrays:
            metadata[key] = value
    shapes, types, offsets = {}, {}, {}
    for _ in range(n_tensors):
        name = cursor.string()
        n_dims = cursor.take("I")
        dims = [cursor.take("Q") for _ in range(n_dims)]
        types[name], offsets[name] = cursor.take("IQ")  # offsets count from the aligned start of the data
        shapes[name] = tuple(reversed(dims))  # GGUF lists the fastest-varying dimension first
    alignment = int(metadata.get("general.alignment", 32))
    data_start = -(-cursor.at // alignment) * alignment
    return GGUFHeader(metadata, shapes, types, {name: data_start + at for name, at in offsets.items()})
