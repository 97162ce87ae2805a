"""Is this folder a LoRA adapter we can use? Checked from the files' headers, before anything reads the weights
or writes an export: random bytes for weights or a broken config once exported as "wrote peft", exit 0.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from ..errors import UserError

# safetensors dtypes and their sizes in bytes
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
MAX_HEADER_BYTES = 100 << 20  # the format's own limit


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """name -> {"dtype", "shape"} from a safetensors file, every entry checked against the file's size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a safetensors header")
            (length,) = struct.unpack("<Q", head)
            if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
                raise ValueError("not a safetensors file (bad header length)")
            header = json.loads(fh.read(length).decode("utf-8"))
    except OSError as exc:
        raise UserError(f"Can't read {path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not a safetensors file ({str(exc).splitlines()[0][:80]})") from None
    if not isinstance(header, dict):
        raise UserError(f"{path} is not a safetensors file (its header is not an object)")
    data_size = size - 8 - length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            if not (all(isinstance(d, int) and d >= 0 for d in shape) and isinstance(start, int)
                    and isinstance(end, int)):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: tensor {name!r} has no valid dtype, shape and offsets") from None
        if dtype not in DTYPE_BYTES or not 0 <= start <= end <= data_size \
                or end - start != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise UserError(f"{path}: tensor {name!r} doesn't fit the file (damaged or cut short)")
        tensors[name] = {"dtype": dtype, "shape": tuple(shape)}
    return tensors


def read_config(path: Path) -> dict:
    """adapter_config.json, with the fields a LoRA needs of the right types."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"Can't read {path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({str(exc).splitlines()[0][:80]})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a peft adapter config (not a JSON object)")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise UserError(f"{path} is a {config.get('peft_type')} adapter; only LoRA adapters are supported")
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not (isinstance(rank, int) and not isinstance(rank, bool) and rank > 0):
        raise UserError(f"{path}: 'r' must be a positive whole number, not {rank!r}")
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha)):
        raise UserError(f"{path}: 'lora_alpha' must be a number, not {alpha!r}")
    targets = config.get("target_modules")
    if targets is not None and not isinstance(targets, (str, list)):
        raise UserError(f"{path}: 'target_modules' must be a list of names")
    for key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(key) or {}, dict):
            raise UserError(f"{path}: {key!r} must be an object")
    return config


def validate_adapter(folder: Path, base_gguf: Path | None = None) -> None:
    """UserError (one line) unless `folder` holds a readable LoRA: a config of the right shape, a safetensors
    file whose tensors fit it, A and B of every module agreeing on a rank, and (with a GGUF base at hand)
    each module's shape matching the base tensor it changes."""
    folder = Path(folder)
    config = read_config(folder / "adapter_config.json")
    tensors = read_safetensors_header(folder / "adapter_model.safetensors")
    modules: dict[str, dict[str, tuple]] = {}
    for name, entry in tensors.items():
        for part in ("lora_A", "lora_B"):
            if f".{part}." in name:
                modules.setdefault(name.split(f".{part}.")[0], {})[part] = entry["shape"]
    if not modules:
        raise UserError(f"{folder / 'adapter_model.safetensors'} holds no LoRA tensors (lora_A / lora_B)")
    for module, parts in modules.items():
        a, b = parts.get("lora_A"), parts.get("lora_B")
        if a is None or b is None or len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            raise UserError(f"{folder.name}: LoRA module {module} has mismatched A {a} and B {b} matrices")
    if base_gguf is not None:
        _check_against_gguf(folder, modules, Path(base_gguf))


def _check_against_gguf(folder: Path, modules: dict[str, dict[str, tuple]], base_gguf: Path) -> None:
    import gguf

    from .gguf_lora import read_base

    try:
        base = read_base(base_gguf)
    except UserError:
        return  # an architecture the converter doesn't map, or the base's own problem (reported when it loads)
    name_map = gguf.TensorNameMap(gguf.MODEL_ARCH[base.arch.upper()], base.n_blocks)
    for module, parts in modules.items():
        gguf_name = name_map.get_name(module.removeprefix("base_model.model."))
        shape = _stored_shape(base, gguf_name) if gguf_name else None
        if shape is None:
            raise UserError(f"{folder.name} changes {module}, which {base_gguf.name} doesn't have (another base?)")
        update = (parts["lora_B"][0], parts["lora_A"][1])
        if update != tuple(shape):
            raise UserError(f"{folder.name} doesn't fit {base_gguf.name}: {module} changes a {shape[0]}x{shape[1]}"
                            f" weight with a {update[0]}x{update[1]} update (another base?)")


def _stored_shape(base, gguf_name: str) -> tuple[int, ...] | None:
    """The base's shape for `gguf_name`; where the base stores that tensor as parts (a phi3 GGUF with attn_q/k/v
    for the fused attn_qkv, gguf_layouts.py), the parts' rows stacked, as the converter splits B."""
    from .gguf_layouts import LAYOUTS

    block, _, kind = gguf_name.rpartition(".")
    parts = [base.tensor_shapes.get(f"{block}.{part}.weight") for part in LAYOUTS[base.arch].splits.get(kind, ())]
    if f"{gguf_name}.weight" not in base.tensor_shapes and parts and all(parts):
        return (sum(part[0] for part in parts), parts[0][1])
    return base.tensor_shapes.get(f"{gguf_name}.weight")
