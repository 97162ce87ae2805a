"""Which model a base is, read from the model itself rather than from its file name.

The same model reaches tui-align as a GGUF (for chat) and as a transformers folder (for training), under
different names, and a file name proves nothing either way. A base is identified by its architecture, its
shapes, and a few rows of two weight tensors that no converter reorders or rescales (the token embedding
and the first block's down projection), compared with a tolerance for the GGUF's quantization: a Q4 copy
is ~10% off its folder, a different model of the same shape ~140%.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

# (GGUF tensor, the end of its transformers name): the tensors sampled, rows in the same order in both forms
FINGERPRINT = (("token_embd.weight", "embed_tokens.weight"), ("blk.0.ffn_down.weight", "layers.0.mlp.down_proj.weight"))
SAMPLED_ROWS = 4
# transformers model_type -> the GGUF architecture keys llama.cpp writes for it, where they differ
GGUF_ARCHS = {"mistral": ("llama", "mistral3"), "gemma3_text": ("gemma3",)}
# How far (relative L2) storage may move the sampled rows: float types round, 8-bit a little, fewer bits more.
EXACT_TOLERANCE, Q8_TOLERANCE, QUANT_TOLERANCE = 0.01, 0.03, 0.5


@dataclass(frozen=True)
class Identity:
    name: str  # the file or folder name, for messages
    archs: tuple[str, ...]  # the GGUF architecture keys it can be
    shapes: dict[str, tuple[int, ...]]  # fingerprint tensor -> shape (numpy order)
    blocks: int
    rows: dict[str, np.ndarray]  # fingerprint tensor -> its sampled rows, float32 (absent: unreadable)
    tolerances: dict[str, float]  # fingerprint tensor -> how far its storage may have moved it


def check_same_base(run_name: str, recorded: dict, base_location: str) -> None:
    """Refuse `base_location` unless it is the model run.json's `recorded` base says the run trained on.

    Where either side can't be read (a hub id, a file since moved), the names decide, as they did before.
    """
    location = recorded.get("location")
    if location and _same_file(location, base_location):
        return
    trained = identify(location) if location else None
    given = identify(base_location)
    if trained is None or given is None:
        if location != base_location and recorded.get("model_id") != Path(base_location).name:
            raise UserError(f"{run_name} was trained on {recorded.get('model_id')}, not on {Path(base_location).name}.")
        return
    why = difference(trained, given)
    if why:
        names = (trained.name, given.name) if trained.name != given.name else (location, base_location)
        raise UserError(f"{run_name} was trained on {names[0]}, not on {names[1]}: {why}.")


def _same_file(a: str, b: str) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:
        return False


def identify(location: str | Path) -> Identity | None:
    """The identity of a GGUF file or transformers folder; None where it can't be read (gone, a hub id)."""
    path = Path(location).expanduser()
    try:
        if path.is_file():
            return _from_gguf(path)
        if (path / "config.json").is_file():
            return _from_folder(path)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


def difference(a: Identity, b: Identity) -> str | None:
    """Why `a` and `b` are different models, in a few words; None when they are the same model."""
    if not set(a.archs) & set(b.archs):
        return f"{a.archs[0]} vs {b.archs[0]} models"
    if a.blocks != b.blocks:
        return f"{a.blocks} vs {b.blocks} layers"
    for name, shape in a.shapes.items():
        if b.shapes.get(name) not in (None, shape):
            return f"{name} is {'x'.join(map(str, shape))} vs {'x'.join(map(str, b.shapes[name]))}"
    for name in [name for name, _ in FINGERPRINT if name in a.rows and name in b.rows]:
        tolerance = max(a.tolerances[name], b.tolerances[name])
        apart = float(np.linalg.norm(a.rows[name] - b.rows[name]) / max(np.linalg.norm(b.rows[name]), 1e-12))
        if apart > tolerance:
            return f"their {name} weights are {apart:.0%} apart (one model quantized would be within {tolerance:.0%})"
    return None


def row_indices(rows: int) -> list[int]:
    """Rows spread over the tensor, the same on both sides because the shapes are compared first."""
    return sorted({int(i) for i in np.linspace(0, rows - 1, SAMPLED_ROWS + 2)[1:-1]})


def _from_gguf(path: Path) -> Identity:
    import gguf

    from .gguf_header import read_header

    header = read_header(path)
    arch = header.metadata["general.architecture"]
    shapes, rows, tolerances = {}, {}, {}
    with open(path, "rb") as fh:
        for name, _ in FINGERPRINT:
            if name not in header.tensor_shapes:
                continue
            shape = shapes[name] = header.tensor_shapes[name]
            qtype = gguf.GGMLQuantizationType(header.tensor_types[name])
            block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
            row_bytes = shape[-1] // block * block_bytes
            tolerances[name] = _tolerance(qtype)
            sampled = []
            for index in row_indices(shape[0]):
                fh.seek(header.tensor_offsets[name] + index * row_bytes)
                raw = np.frombuffer(fh.read(row_bytes), dtype=np.uint8).reshape(1, row_bytes)
                try:
                    sampled.append(gguf.quants.dequantize(raw, qtype).reshape(-1).astype(np.float32))
                except NotImplementedError:  # a quantization numpy can't decode: compare shapes only
                    break
            else:
                rows[name] = np.stack(sampled)
    return Identity(path.name, (arch,), shapes, int(header.metadata[f"{arch}.block_count"]), rows, tolerances)


def _tolerance(qtype) -> float:
    import gguf

    exact = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16}
    if qtype in exact:
        return EXACT_TOLERANCE
    return Q8_TOLERANCE if qtype == gguf.GGMLQuantizationType.Q8_0 else QUANT_TOLERANCE


def _from_folder(folder: Path) -> Identity:
    from safetensors import safe_open

    config = json.loads((folder / "config.json").read_text())
    text = config.get("text_config") or config
    model_type = text.get("model_type") or config.get("model_type", "?")
    files = _weight_files(folder)
    shapes, rows = {}, {}
    for gguf_name, suffix in FINGERPRINT:
        for file, keys in files.items():
            key = next((k for k in keys if k == suffix or k.endswith("." + suffix)), None)
            if key is None:
                continue
            with safe_open(str(folder / file), framework="pt") as weights:
                tensor = weights.get_slice(key)
                shape = shapes[gguf_name] = tuple(tensor.get_shape())
                rows[gguf_name] = np.stack(
                    [tensor[i : i + 1].float().numpy().reshape(-1) for i in row_indices(shape[0])]
                )
            break
    blocks = int(text.get("num_hidden_layers", -1))
    tolerances = dict.fromkeys(rows, EXACT_TOLERANCE)  # bf16 checkpoints round by under 1%
    return Identity(folder.name, GGUF_ARCHS.get(model_type, (model_type,)), shapes, blocks, rows, tolerances)


def _weight_files(folder: Path) -> dict[str, list[str]]:
    """{safetensors file: [tensor names]} of a folder, one file or an indexed shard set."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        by_file: dict[str, list[str]] = {}
        for key, file in json.loads(index.read_text())["weight_map"].items():
            by_file.setdefault(file, []).append(key)
        return by_file
    found = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as weights:
            found[file.name] = list(weights.keys())
    return found
